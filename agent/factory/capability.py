"""``FactoryCapability``: runs the factory endpoint while the device is not locked.

Started by the agent with every other capability. It is inert unless the agent was given a
factory trust anchor and port (on the board: the anchor in the image). A device that was already
claimed in host mode does not fall back into factory state; only a factory reset gets it there.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import rootrequest
from agent.auth import claim
from agent.capability import Route
from agent.config import DeviceFacts
from agent.devicesecret import host_serial
from agent.factory import session as sess
from agent.identity import provisioned

if TYPE_CHECKING:
    from agent.factory.device import FactoryDevice
    from agent.factory.server import FactoryServer
    from agent.services import Services

log = logging.getLogger(__name__)


def _fused_facts(services: Services) -> DeviceFacts:
    """The facts as fused in hardware. In host mode without a configured serial the core makes up
    a placeholder from the device secret (agent.runtime._host_facts); that is not a fused serial,
    so the station assigns one (write-once), as a line does for boards with blank OTP."""
    facts = services.config.device
    placeholder = host_serial(services.secret)
    if services.config.host_mode and facts.serial == placeholder:
        return dataclasses.replace(facts, serial="")
    return facts


class FactoryCapability:
    name = "factory"

    def __init__(self, services: Services) -> None:
        self._services = services
        self._server: FactoryServer | None = None
        self._note = "inactive"
        self._device: FactoryDevice | None = None
        # Enter factory state here, not in start(): the agent builds every capability before it
        # serves anything, so the HTTPS middleware already sees is_factory_state() on request one.
        if self._should_run():
            # Only a device in factory state loads the factory protocol, device and server: a
            # locked device (every boot after provisioning) never opens the port.
            from agent.factory.device import FactoryDevice
            from agent.factory.firmware import firmware_sha256

            config = services.config
            assert config.factory_ca is not None
            self._anchor = config.factory_ca.read_bytes()
            self._device = FactoryDevice(
                services.state,
                services.secret,
                _fused_facts(services),
                self._anchor,
                services.audit,
                services.clock,
                firmware_sha256(services.state),
            )

    def _should_run(self) -> bool:
        services = self._services
        config = services.config
        state = services.state
        if provisioned.record_path(state).exists():
            sess.discard(state)  # a lock interrupted after its commit point leaves the session behind
            self._note = "locked"
            return False
        if config.factory_ca is None or config.factory_port is None:
            self._note = "no factory trust anchor"
            return False
        if not sess.is_factory_state(state) and claim.load(state).claimed:
            self._note = "claimed outside the factory; factory reset required"
            log.warning("factory endpoint not started: device already claimed")
            return False
        return True

    def routes(self) -> Sequence[Route]:
        return ()

    async def start(self) -> None:
        services = self._services
        config = services.config
        device = self._device
        if device is None or config.factory_port is None:
            return
        from agent.factory.server import FactoryServer, factory_ssl_context

        self._server = FactoryServer(
            device,
            factory_ssl_context(self._anchor, device.serial),
            config.bind,
            config.factory_port,
            on_locked=self._locked,
        )
        await self._server.start()
        self._note = "factory state"
        services.audit.append("factory.start", outcome="info", details={"port": self._server.port})

    async def _locked(self) -> None:
        self._note = "locked"
        self._server = None
        # HTTPS and RTSPS rebuild their SSL contexts from the factory-issued identity.
        self._services.identity.reload()
        if not self._services.config.host_mode:
            await self._close_factory_port()

    async def _close_factory_port(self) -> None:
        """The board's firewall opened the factory port at boot (camera-init); it closes now, not at
        the next reboot. The agent runs unprivileged and cannot touch the firewall: it asks the
        board's init (root) through a FIFO, and init re-applies the rules from the boot stage's own
        code without the factory port. The request carries no policy, so all a compromised agent
        can ask for is that same re-apply; init prints the applied policy on the console."""
        details: dict[str, Any] = {"port": self._services.config.factory_port}
        fifo = self._services.config.section("board").get("root_requests")
        if not fifo:
            details["reason"] = "no channel to the board's init configured"
        else:
            try:
                rootrequest.send(Path(str(fifo)), rootrequest.FIREWALL_REFRESH)
            except OSError as exc:
                details["reason"] = f"{type(exc).__name__}: {exc.strerror}"
        self._services.audit.append("factory.firewall_close_requested",
                                    outcome="failure" if "reason" in details else "success", details=details)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    def status(self) -> dict[str, Any]:
        return {
            "factory_state": sess.is_factory_state(self._services.state),
            "provisioned": provisioned.record_path(self._services.state).exists(),
            "port": self._server.port if self._server is not None else None,
            "note": self._note,
        }
