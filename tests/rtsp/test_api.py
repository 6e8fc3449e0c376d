"""The sessions API through the real HTTPS app (auth middleware, roles) with a live RTSPS client."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
from aiohttp import web

from agent import capabilities as capability_list
from agent.app import create_app
from agent.auth import claim
from agent.config import build_config
from agent.media.frames import StreamHub
from agent.media.mediaconfig import BackoffConfig
from agent.media.pipeline import StreamPipeline
from agent.rtsp.capability import RtspCapability
from agent.runtime import build_services
from tests.agentharness import STRONG_PASSWORD, free_port
from tests.rtsp.client import RtspClient, pull
from tests.rtsp.harness import stream_configs


class Media:
    def __init__(self, hubs: dict[str, StreamHub]) -> None:
        self.hubs = hubs
        self.audio_sink = None


async def test_sessions_api_roles_and_admin_ends_session(tmp_path: Path) -> None:
    cfg = build_config(tmp_path / "state", {"bind": "127.0.0.1"}, https_port=free_port(), rtsps_port=free_port())
    svc = build_services(cfg)
    claim.ensure_host_setup_code(svc.state, svc.secret)
    code = svc.state.setup_code_file.read_text().strip()
    sub_cfg = stream_configs()["sub"]
    hub = StreamHub("sub")
    pipeline = StreamPipeline(hub, sub_cfg, BackoffConfig())
    pipeline.start()
    rtsp = RtspCapability(svc, Media({"sub": hub}))
    # the production app with core + audit; RTSP fed by a small synthetic sub stream instead of
    # the media capability's full-size defaults (test CPU)
    core = [c for c in capability_list.load(svc) if c.name in ("core", "audit")]
    app = create_app(svc, [*core, rtsp])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", cfg.https_port, ssl_context=svc.identity.server_ssl_context())
    await site.start()
    ca = ssl.create_default_context(cadata=svc.identity.trust_anchor_pem().decode())
    base = f"https://127.0.0.1:{cfg.https_port}/api/v1"
    try:
        async with aiohttp.ClientSession() as http:
            async def call(method: str, path: str, token: str | None = None, body: object = None) -> tuple[int, object]:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.request(method, base + path, json=body, headers=headers, ssl=ca) as r:
                    return r.status, await r.json(content_type=None)

            status, _ = await call("POST", "/claim", body={"setup_code": code, "username": "owner",
                                                          "password": STRONG_PASSWORD})
            assert status == 201
            _, login = await call("POST", "/login", body={"username": "owner", "password": STRONG_PASSWORD})
            admin = login["token"]  # type: ignore[index]
            status, _ = await call("POST", "/users", admin, {"username": "watcher", "password": STRONG_PASSWORD,
                                                             "role": "viewer"})
            assert status == 201
            _, login = await call("POST", "/login", body={"username": "watcher", "password": STRONG_PASSWORD})
            viewer = login["token"]  # type: ignore[index]

            assert rtsp.tls_port is not None
            client = RtspClient("127.0.0.1", rtsp.tls_port, "watcher", STRONG_PASSWORD, ctx=ca)
            await asyncio.to_thread(client.connect)
            reply = await asyncio.to_thread(client.play, "sub")
            assert reply.status == 200
            await asyncio.to_thread(pull, client, 0.5)

            status, body = await call("GET", "/streams/sessions")
            assert status == 401
            status, body = await call("GET", "/streams/sessions", viewer)
            assert status == 200
            [row] = body["sessions"]  # type: ignore[index]
            assert row["user"] == "watcher" and row["stream"] == "sub" and row["bytes"] > 0
            assert row["address"].startswith("127.0.0.1:")
            status, _ = await call("DELETE", f"/streams/sessions/{row['id']}", viewer)
            assert status == 403
            status, _ = await call("DELETE", "/streams/sessions/feedface", admin)
            assert status == 404
            status, _ = await call("DELETE", f"/streams/sessions/{row['id']}", admin)
            assert status == 200
            _, body = await call("GET", "/streams/sessions", viewer)
            assert body["sessions"] == []  # type: ignore[index]
            client.close()
    finally:
        await runner.cleanup()
        await asyncio.to_thread(pipeline.stop)
        hub.close()
        svc.audit.close()
    records = [line for seg in sorted(svc.state.audit_dir.glob("seg-*.jsonl")) for line in seg.read_text().splitlines()]
    assert any('"stream.stop"' in r and "ended by admin" in r and '"owner"' in r for r in records)
