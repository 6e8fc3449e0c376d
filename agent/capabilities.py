"""The explicit list of the agent's capabilities and CLI command groups (no plugin magic).

Order matters: capabilities start in this order and stop in reverse, so media (the producer)
starts before RTSP (its consumer) and stops after it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.capability import Capability

if TYPE_CHECKING:
    from agent.capability import Route
    from agent.services import Services

# Started once HTTPS answers, in this order (media before RTSP, its consumer). Readiness is the
# management API; the media encoders are CPU-bound and would otherwise hold up the listener and
# its first TLS handshakes, which on the board's emulated CPU costs seconds. Each of these loads
# its internals in start() (in a worker thread), not at import: media its hubs and pipelines,
# RTSP its server, OTA its installer chain; on the board every module imported before the
# listener is on the boot's critical path (docs/benchmarks-boot.md).
AFTER_LISTENING = ("media", "rtsp", "ota")


def preload() -> None:
    """Import what ``load`` imports, building nothing: on the board this runs while the boot stage
    does (agent.bootgate). ``load`` keeps its own explicit imports so mypy checks the
    constructors; tests/api/test_boot_gate.py checks that this list covers them."""
    import agent.api.core
    import agent.audit.capability
    import agent.factory.capability
    import agent.media.capability
    import agent.ota.capability
    import agent.rtsp.capability  # noqa: F401


def load(svc: Services) -> list[Capability]:
    from agent.api.core import CoreCapability
    from agent.audit.capability import AuditCapability
    from agent.factory.capability import FactoryCapability
    from agent.media.capability import MediaCapability
    from agent.ota.capability import OtaCapability
    from agent.rtsp.capability import RtspCapability

    media = MediaCapability(svc)
    return [
        CoreCapability(svc),
        AuditCapability(svc),
        FactoryCapability(svc),
        media,
        RtspCapability(svc, media),
        OtaCapability(svc),
    ]


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from agent.audit.cli import register_cli as audit_cli
    from agent.factory.cli import register_cli as factory_cli
    from agent.ota.cli import register_cli as ota_cli

    audit_cli(sub)
    ota_cli(sub)
    factory_cli(sub)


class StartLater:
    """A capability whose start waits for ``release``: the app's lifecycle sees a no-op start (its
    routes are registered as usual and answer with the capability's own not-started errors)."""

    def __init__(self, cap: Capability) -> None:
        self.cap = cap
        self.name = cap.name
        self._started = False

    def routes(self) -> Sequence[Route]:
        return self.cap.routes()

    def status(self) -> dict[str, Any]:
        return self.cap.status()

    async def start(self) -> None:
        return None

    async def release(self) -> None:
        if not self._started:
            await self.cap.start()
            self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.cap.stop()


def hold_back(caps: Sequence[Capability]) -> list[Capability]:
    """``caps`` with those in AFTER_LISTENING wrapped in StartLater (same order)."""
    return [StartLater(c) if c.name in AFTER_LISTENING else c for c in caps]


async def release_held(caps: Sequence[Capability]) -> None:
    for cap in caps:
        if isinstance(cap, StartLater):
            await cap.release()
