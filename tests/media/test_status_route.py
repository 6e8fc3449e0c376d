"""GET /api/v1/media/status through the real HTTPS app: role-checked, reports per-stream state."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from agent.api.core import CoreCapability
from agent.app import create_app
from agent.audit.capability import AuditCapability
from agent.auth import claim
from agent.config import build_config
from agent.media.capability import MediaCapability
from agent.runtime import build_services
from agent.tlsconfig import client_context
from tests.agentharness import Agent, free_port
from tests.media.conftest import eventually, small_settings


@contextlib.asynccontextmanager
async def agent_with_media(state_dir: Path) -> AsyncIterator[tuple[Agent, MediaCapability]]:
    https_port = free_port()
    cfg = build_config(state_dir, {"bind": "127.0.0.1"}, https_port=https_port, rtsps_port=free_port())
    svc = build_services(cfg)
    await svc.settings.apply(small_settings())
    claim.ensure_host_setup_code(svc.state, svc.secret)
    code = svc.state.setup_code_file.read_text().strip()
    media = MediaCapability(svc)
    app = create_app(svc, [CoreCapability(svc), AuditCapability(svc), media])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", https_port, ssl_context=svc.identity.server_ssl_context())
    await site.start()
    ca_file = state_dir / "test-ca.pem"
    ca_file.write_bytes(svc.identity.trust_anchor_pem())
    async with aiohttp.ClientSession() as http:
        try:
            yield Agent(svc, f"https://127.0.0.1:{https_port}", https_port, 0, ca_file, code,
                        client_context(cafile=ca_file), http, app), media
        finally:
            await runner.cleanup()
            svc.audit.close()


async def test_media_status_route(tmp_path: Path) -> None:
    async with agent_with_media(tmp_path / "state") as (agent, media):
        status, _ = await agent.request("GET", "/api/v1/media/status")
        assert status == 403  # unclaimed device: nothing but the claim endpoint
        admin = await agent.claim()
        status, _ = await agent.request("GET", "/api/v1/media/status")
        assert status == 401
        viewer = await agent.add_user(admin, "watcher", "viewer")
        await eventually(lambda: media.pipeline("main").fps() > 5 and media.pipeline("sub").fps() > 5)
        status, body = await agent.request("GET", "/api/v1/media/status", token=viewer)
        assert status == 200, body
        main = body["streams"]["main"]
        assert main["state"] == "running" and main["restarts"] == 0 and main["last_error"] is None
        assert 10 < main["fps_measured"] < 20  # configured 15 fps
        assert body["streams"]["sub"]["video"]["width"] == 256
        assert body["talk"] == {"output": "wav", "active": False, "active_codec": None, "sessions": 0,
                                "last_error": None}
    # app cleanup stopped the pipelines (capability stop())
    assert media.pipeline("main").state == "stopped" and media.hub("main").closed
