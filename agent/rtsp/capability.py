"""``RtspCapability``: the RTSPS server as an agent capability (listeners, status, routes, audit)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from agent.capability import Role, Route
from agent.errors import NotFound
from agent.rtsp.config import RtspConfig

if TYPE_CHECKING:
    from agent.rtsp.feeds import FrameSource
    from agent.rtsp.handler import RtspHandler, TalkSink
    from agent.rtsp.server import RtspServer
    from agent.services import Services
    from agent.settings.model import Settings

log = logging.getLogger(__name__)


def _import_server() -> None:
    import agent.rtsp.digest
    import agent.rtsp.feeds
    import agent.rtsp.handler
    import agent.rtsp.server  # noqa: F401


class MediaPort(Protocol):
    """What RTSP needs from the media capability: a hub per stream name and the talk output."""

    @property
    def hubs(self) -> Mapping[str, FrameSource]: ...

    @property
    def audio_sink(self) -> TalkSink | None: ...


class RtspCapability:
    name = "rtsp"

    def __init__(self, services: Services, media: MediaPort, *, port: int | None = None) -> None:
        self._svc = services
        self._media = media
        self.cfg = RtspConfig.from_section(services.config.section("rtsp"))
        self._port = port if port is not None else services.config.rtsps_port
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: RtspServer | None = None
        self.handler: RtspHandler | None = None
        self.tls_port: int | None = None
        self._plain_wanted: int | None = None

    # --- audit --------------------------------------------------------------------------------
    def _audit(self, event: str, *, outcome: str, actor: str | None = None, source: str | None = None,
               target: str | None = None, details: Mapping[str, Any] | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self._svc.audit.record(
            event, outcome=outcome, actor=actor, source=source, target=target, details=details))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        # The server's modules load here, after HTTPS answers (agent.capabilities.AFTER_LISTENING):
        # on the board's emulated CPU they would otherwise lengthen the boot's critical path. In a
        # worker thread, so that the event loop goes on with the listener's first TLS handshakes.
        await asyncio.to_thread(_import_server)
        from agent.rtsp.digest import DigestAuthenticator
        from agent.rtsp.feeds import FeedManager
        from agent.rtsp.handler import RtspHandler
        from agent.rtsp.server import RtspServer

        svc = self._svc
        auth = DigestAuthenticator(svc.users, nonce_lifetime_s=self.cfg.nonce_lifetime_s,
                                   replay_cache_size=self.cfg.replay_cache_size)
        feeds = FeedManager(self._media.hubs, self.cfg, cname=f"{svc.config.device.serial or 'camera'}@rtsp")
        self.handler = RtspHandler(self.cfg, auth=auth, feeds=feeds, audit=self._audit,
                                   sink=self._media.audio_sink, title=svc.config.device.model)
        self.server = RtspServer(self.cfg, self.handler, wall=svc.clock)
        ctx = svc.identity.server_ssl_context()
        self.tls_port = await self.server.start_tls(svc.config.bind, self._port, ctx)
        # IdentityStore.reload swaps the chain inside the same SSLContext, so new handshakes use
        # the new certificate; existing sessions keep theirs until they reconnect.
        svc.identity.on_change(lambda: log.info("rtsp: device certificate changed"))
        svc.settings.subscribe(self._settings_changed)
        await self._apply_plain(svc.settings.current().network.rtsp_plain_port, actor=None)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _settings_changed(self, old: Settings, new: Settings) -> None:
        if old.network.rtsp_plain_port != new.network.rtsp_plain_port:
            await self._apply_plain(new.network.rtsp_plain_port, actor="settings")

    async def _apply_plain(self, port: int | None, *, actor: str | None) -> None:
        assert self.server is not None
        self._plain_wanted = port
        if port is None:
            if self.server.plain_port is not None:
                await self.server.stop_plain()
                self._audit("rtsp.plain_port", outcome="info", actor=actor, details={"enabled": False})
            return
        bound = await self.server.start_plain(self._svc.config.bind, port)
        # plaintext RTSP exposes credentials' digests and video: the admin chose it, we record it
        self._audit("rtsp.plain_port", outcome="info", actor=actor, details={"enabled": True, "port": bound})

    # --- status and API -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        warnings = []
        if self.server is not None and self.server.plain_port is not None:
            warnings.append(f"plaintext RTSP is enabled on port {self.server.plain_port}")
        h = self.handler
        talk = h.talk.holder if h else None
        return {
            "rtsps_port": self.tls_port,
            "plain_port": self.server.plain_port if self.server else None,
            "connections": len(self.server.protocols) if self.server else 0,
            "sessions": len(h.sessions) if h else 0,
            "talker": talk.username if talk else None,
            "warnings": warnings,
        }

    def sessions(self) -> list[dict[str, Any]]:
        h = self.handler
        if h is None:
            return []
        now = time.monotonic()
        wall = self._svc.clock()
        return [
            {"id": s.id, "user": s.username, "address": s.source, "stream": s.stream,
             "state": s.state.value, "bytes": h.session_bytes(s),
             "since": wall - (now - s.created),
             "talk": s.backchannel is not None}
            for s in h.sessions.all()
        ]

    def routes(self) -> Sequence[Route]:
        return [
            Route("GET", "/api/v1/streams/sessions", self._list, Role.VIEWER,
                  summary="Active RTSP sessions"),
            Route("DELETE", "/api/v1/streams/sessions/{id}", self._end, Role.ADMIN,
                  summary="End an RTSP session"),
        ]

    async def _list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"sessions": self.sessions()})

    async def _end(self, request: web.Request) -> web.StreamResponse:
        from agent.http.util import client_address, current_user

        sid = request.match_info["id"]
        h = self.handler
        s = h.end_session(sid, "ended by admin") if h is not None and len(sid) <= 64 else None
        if s is None:
            raise NotFound("no such session", code="rtsp.session_not_found")
        self._audit("stream.stop", outcome="success", actor=current_user(request).username,
                    source=client_address(request), target=s.stream,
                    details={"session": sid, "reason": "ended by admin", "user": s.username})
        return web.json_response({"ended": sid})
