"""The factory flow inside the agent: core middleware, claim with the label's code, HTTPS identity swap."""

from __future__ import annotations

import json
import secrets
import ssl
from pathlib import Path

import aiohttp
from aiohttp import web

from agent.api.core import CoreCapability
from agent.app import create_app
from agent.config import build_config
from agent.factory import is_factory_state
from agent.factory.capability import FactoryCapability
from agent.runtime import build_services
from provisioning.db import SqliteRepository
from provisioning.pki import StationPki
from provisioning.station import Job, Station
from tests.provisioning.helpers import free_port


async def test_agent_in_factory_state_then_provisioned_and_claimed(tmp_path: Path, shared_pki: Path) -> None:
    https_port, factory_port = free_port(), free_port()
    config = build_config(
        tmp_path / "state",
        {"bind": "127.0.0.1"},
        https_port=https_port,
        factory_ca=shared_pki / "root-ca.pem",
        factory_port=factory_port,
    )
    svc = build_services(config)
    factory = FactoryCapability(svc)
    assert is_factory_state(svc.state)  # before anything serves
    changed: list[int] = []
    svc.identity.on_change(lambda: changed.append(1))
    app = create_app(svc, [CoreCapability(svc), factory])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", https_port, ssl_context=svc.identity.server_ssl_context()).start()
    base = f"https://127.0.0.1:{https_port}"
    # No serial configured: the host-mode placeholder is not a fused serial, the station assigns one.
    serial = "ASSIGNED0001"
    assert svc.config.device.serial != serial
    try:
        local = ssl.create_default_context(cadata=svc.identity.trust_anchor_pem().decode())
        local.check_hostname = False
        async with aiohttp.ClientSession() as http:
            # Factory state: every API refused, the claim included, even with a well-formed body.
            for method, path in (
                ("POST", "/api/v1/claim"),
                ("GET", "/api/v1/openapi.json"),
                ("POST", "/api/v1/login"),
                ("GET", "/api/v1/settings"),
            ):
                async with http.request(method, base + path, json={}, ssl=local) as resp:
                    assert resp.status == 403, path
                    assert (await resp.json())["error"]["code"] == "device.factory_state"
            assert factory.status()["port"] == factory_port

            repo = SqliteRepository(tmp_path / "f.db")
            station = Station(StationPki.load(shared_pki, "station-2"), repo)
            out = await station.provision(
                Job(serial, svc.config.device.model), "127.0.0.1", factory_port, tmp_path / "labels"
            )
            assert out.status == "locked"
            assert not is_factory_state(svc.state)
            assert changed, "IdentityStore listeners were not told"
            assert factory.status()["port"] is None

            # HTTPS now validates against the factory CA by the serial-based name only.
            factory_ctx = ssl.create_default_context(cafile=str(shared_pki / "root-ca.pem"))
            connector = aiohttp.TCPConnector(ssl=factory_ctx, resolver=_Loopback(), force_close=True)
            async with aiohttp.ClientSession(connector=connector) as strict:
                code = json.loads((tmp_path / "labels" / f"{serial}.json").read_bytes())["setup_code"]
                url = f"https://cam-{serial.lower()}.local:{https_port}/api/v1/claim"
                body = {"setup_code": code, "username": "owner", "password": secrets.token_urlsafe(18)}
                async with strict.post(url, json=body) as resp:
                    assert resp.status == 201, await resp.text()
        # The old self-issued trust no longer validates the device (a new connection).
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            try:
                async with fresh.get(base + "/api/v1/openapi.json", ssl=local):
                    raise AssertionError("self-issued trust still accepted")
            except aiohttp.ClientConnectorCertificateError:
                pass
    finally:
        await runner.cleanup()


class _Loopback(aiohttp.abc.AbstractResolver):
    """Resolve the device's serial-based name to loopback (what mDNS does on a LAN)."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[aiohttp.abc.ResolveResult]:
        import socket

        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None
