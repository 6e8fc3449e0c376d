"""The asyncio adapter: TLS listener (and the optional, audited plaintext one), byte framing,
timers. All protocol decisions are in ``handler``; this file moves bytes and keeps time.

``asyncio.Protocol`` rather than streams: the fan-out writes each frame straight into every
client's transport from the pump, with no per-client task or queue in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.rtsp.config import RtspConfig
from agent.rtsp.errors import ParseError
from agent.rtsp.handler import Connection, Reply, RtspHandler
from agent.rtsp.message import Interleaved, Request, RequestParser, Response

log = logging.getLogger(__name__)
_MAX_PIPELINED = 8
_ids = itertools.count(1)


class _Writer:
    __slots__ = ("_transport", "reason")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.reason: str | None = None  # why we closed it, for the audit record

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    def abort(self, reason: str) -> None:
        log.info("closing RTSP connection: %s", reason)
        self.reason = self.reason or reason
        self._transport.abort()


class RtspProtocol(asyncio.Protocol):
    def __init__(self, server: RtspServer, secure: bool) -> None:
        self._server = server
        self._secure = secure
        self._cfg = server.cfg
        self._parser = RequestParser(server.cfg)
        self._transport: asyncio.Transport | None = None
        self._conn: Connection | None = None
        self._queue: deque[Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self.partial_since: float | None = None
        self.closing = False

    # --- asyncio callbacks ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername") or ("?", 0)
        if len(self._server.protocols) >= self._cfg.max_connections:
            transport.abort()
            return
        # our own buffer limit is the fan-out's (Subscriber.limit); asyncio's pause_writing is unused
        transport.set_write_buffer_limits(high=self._cfg.client_buffer_bytes * 4)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._cfg.socket_send_buffer)
        conn = Connection(next(_ids), f"{peer[0]}:{peer[1]}", _Writer(transport), self._secure,
                          last_activity=time.monotonic())
        self._conn = conn
        self._server.protocols.add(self)
        self._server.handler.connections[conn.id] = conn

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._server.protocols.discard(self)
        if self._conn is not None:
            writer = self._conn.writer
            reason = writer.reason if isinstance(writer, _Writer) and writer.reason else "connection closed"
            self._server.handler.closed(self._conn, reason)
        if self._worker is not None:
            self._worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closing or self._conn is None:
            return
        now = time.monotonic()
        try:
            events = self._parser.feed(data)
        except ParseError as exc:
            self._fail(exc)
            return
        self.partial_since = (self.partial_since or now) if self._parser.buffered else None
        for ev in events:
            if isinstance(ev, Interleaved):
                if not self._server.handler.data(self._conn, ev, now):
                    self._close("too many bad interleaved frames")
                    return
            else:
                if len(self._queue) >= _MAX_PIPELINED:
                    self._close("too many pipelined requests")
                    return
                self._queue.append(ev)
        if self._queue and (self._worker is None or self._worker.done()):
            self._worker = asyncio.get_running_loop().create_task(self._drain())

    def eof_received(self) -> bool | None:
        return None

    # --- request processing -------------------------------------------------------------------
    async def _drain(self) -> None:
        assert self._conn is not None and self._transport is not None
        handler = self._server.handler
        while self._queue and not self.closing:
            req = self._queue.popleft()
            try:
                reply = await handler.handle(self._conn, req, time.monotonic(), self._server.wall())
            except Exception:
                log.exception("RTSP request failed")
                reply = Reply(Response(500).add("CSeq", str(req.cseq or 0)), close=True)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if self.closing:
                return
            self._transport.write(reply.response.serialize())
            if reply.after is not None:
                try:
                    reply.after()
                except Exception:
                    log.exception("RTSP post-response action failed")
                    self._close("internal error")
                    return
            if reply.close:
                self._close("protocol")
                return

    def _fail(self, exc: ParseError) -> None:
        assert self._transport is not None
        if self._conn is not None:
            self._server.audit_parse_error(self._conn, exc)
        resp = Response(exc.status).add("CSeq", "0").add("Connection", "close")
        self._transport.write(resp.serialize())
        self._close(exc.code)

    def _close(self, reason: str) -> None:
        if self.closing or self._transport is None:
            return
        self.closing = True
        self._transport.close()

    def abort(self, reason: str) -> None:
        if self._conn is not None and isinstance(self._conn.writer, _Writer):
            self._conn.writer.abort(reason)
        elif self._transport is not None:
            self._transport.abort()
        self.closing = True

    @property
    def connection(self) -> Connection | None:
        return self._conn


class RtspServer:
    """Owns the listeners and the housekeeping timer around one ``RtspHandler``."""

    def __init__(self, cfg: RtspConfig, handler: RtspHandler, *,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.handler = handler
        self.wall = wall
        self.protocols: set[RtspProtocol] = set()
        self._tls: asyncio.Server | None = None
        self._plain: asyncio.Server | None = None
        self._tick: asyncio.Task[None] | None = None
        self.plain_port: int | None = None
        self.parse_errors = 0

    async def start_tls(self, host: str, port: int, ctx: ssl.SSLContext) -> int:
        loop = asyncio.get_running_loop()
        self._tls = await loop.create_server(
            lambda: RtspProtocol(self, True), host, port, ssl=ctx,
            ssl_handshake_timeout=self.cfg.tls_handshake_timeout_s, reuse_address=True,
        )
        if self._tick is None:
            self._tick = loop.create_task(self._housekeeping())
        return int(self._tls.sockets[0].getsockname()[1])

    async def start_plain(self, host: str, port: int) -> int:
        await self.stop_plain()
        loop = asyncio.get_running_loop()
        self._plain = await loop.create_server(lambda: RtspProtocol(self, False), host, port,
                                               reuse_address=True)
        self.plain_port = int(self._plain.sockets[0].getsockname()[1])
        return self.plain_port

    async def stop_plain(self) -> None:
        if self._plain is not None:
            self._plain.close()
            for p in list(self.protocols):
                conn = p.connection
                if conn is not None and not conn.secure:
                    p.abort("plaintext port disabled")
            await self._plain.wait_closed()
            self._plain = None
            self.plain_port = None

    async def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick
            self._tick = None
        await self.stop_plain()
        if self._tls is not None:
            self._tls.close()
        for p in list(self.protocols):
            p.abort("server stopping")
        if self._tls is not None:
            await self._tls.wait_closed()
            self._tls = None
        await self.handler.feeds.close()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.sweep(time.monotonic())
            except Exception:
                log.exception("RTSP housekeeping failed")

    def sweep(self, now: float) -> None:
        for conn in self.handler.tick(now):
            for p in list(self.protocols):
                if p.connection is conn:
                    p.abort("session timeout")
        for p in list(self.protocols):
            pconn = p.connection
            if pconn is None:
                continue
            if p.partial_since is not None and now - p.partial_since > self.cfg.request_deadline_s:
                p.abort("request not completed in time")  # slowloris
            elif (not self.handler.sessions.of_connection(pconn.id)
                  and now - pconn.last_activity > self.cfg.idle_timeout_s):
                p.abort("idle")

    def audit_parse_error(self, conn: Connection, exc: ParseError) -> None:
        self.parse_errors += 1
        log.info("RTSP parse error from %s: %s (%s)", conn.source, exc.message, exc.code)

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.protocols), "parse_errors": self.parse_errors}
