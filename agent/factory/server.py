"""The factory endpoint: HTTP/1.1 + JSON over mutual TLS on its own port, only in factory state.

A small server of our own instead of aiohttp, for one reason: the TLS handshake happens in our
code (``StreamWriter.start_tls``), so a refused client certificate (another CA, expired, none) is
seen and audited, not dropped silently inside the HTTP framework. The TLS layer refuses any
certificate that does not chain to the factory trust anchor; the handler then insists on the
station EKU. The server certificate is a throwaway key made in memory at start: the station
authenticates the device by what it proves (CSR keys, the signed challenge), not by this
certificate. Request parsing is a pure, bounded function (``parse_head``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from agent.factory import protocol as p
from agent.factory.device import FactoryDevice, Peer
from agent.factory.errors import FactoryError, FactoryForbidden, FactoryInvalid
from agent.identity import selfissued
from agent.tlsconfig import server_context

log = logging.getLogger(__name__)

_STEPS = {
    p.PATH_KEYS: "keys",
    p.PATH_CERTS: "certificates",
    p.PATH_CHALLENGE: "challenge",
    p.PATH_SETUP_CODE: "setup_code",
    p.PATH_LOCK: "lock",
}
MAX_HEAD = 8 * 1024
MAX_CONNECTIONS = 8
HANDSHAKE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 60.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def factory_ssl_context(factory_ca_pem: bytes, serial: str) -> ssl.SSLContext:
    now = dt.datetime.now(dt.UTC)
    ca_key = selfissued.new_key()
    ca = selfissued.build_local_ca(ca_key, serial or "factory", now)
    leaf_key = selfissued.new_key()
    leaf = selfissued.build_leaf(ca_key, ca, leaf_key, serial or "factory", now)
    chain = leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ctx = server_context(chain, key_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=factory_ca_pem.decode())
    return ctx


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str
    content_length: int
    keep_alive: bool


def parse_head(raw: bytes) -> RequestHead:
    """Parse a request line and headers (everything up to and including the blank line)."""
    if len(raw) > MAX_HEAD:
        raise FactoryInvalid("request header too large", code="factory.bad_request", status=413)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise FactoryInvalid("request header is not ASCII", code="factory.bad_request") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].startswith("/"):
        raise FactoryInvalid("bad request line", code="factory.bad_request")
    length = 0
    keep_alive = parts[2] == "HTTP/1.1"
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise FactoryInvalid("bad header line", code="factory.bad_request")
        key, value = name.strip().lower(), value.strip()
        if key == "content-length":
            if not value.isdigit() or int(value) > p.MAX_BODY:
                raise FactoryInvalid("bad or too large Content-Length", code="factory.bad_request", status=413)
            length = int(value)
        elif key == "transfer-encoding":
            raise FactoryInvalid("transfer encodings are not accepted", code="factory.bad_request")
        elif key == "connection":
            keep_alive = value.lower() != "close"
    return RequestHead(parts[0], parts[1], length, keep_alive)


def render_response(status: int, doc: dict[str, Any], *, close: bool) -> bytes:
    body = json.dumps(doc).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


class FactoryServer:
    def __init__(
        self,
        device: FactoryDevice,
        ssl_context: ssl.SSLContext,
        host: str,
        port: int,
        on_locked: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._device = device
        self._ssl = ssl_context
        self._host = host
        self._port = port
        self._on_locked = on_locked
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._closing: asyncio.Task[None] | None = None
        self.locked = asyncio.Event()

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self._host, self._port, reuse_address=True)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            current = asyncio.current_task()
            for task in list(self._conns):
                if task is not current:
                    task.cancel()
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            if self._slots.locked():
                writer.close()
                return
            async with self._slots:
                await self._connection(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        address = str(peername[0]) if peername else "?"
        try:
            await writer.start_tls(self._ssl, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self._device.audit_denied("factory.connect", address, f"tls: {reason}")
            return
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            cert = p.require_station_certificate(der)
        except FactoryForbidden as exc:
            self._device.audit_denied("factory.connect", address, exc.code)
            writer.write(render_response(403, {"code": "factory.forbidden", "message": "forbidden"}, close=True))
            await writer.drain()
            return
        peer = Peer(station=p.subject_common_name(cert) or "?", address=address)
        while True:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
            try:
                head = parse_head(raw)
                body = await asyncio.wait_for(reader.readexactly(head.content_length), IDLE_TIMEOUT_S)
                status, doc = await self._dispatch(head, body, peer)
            except FactoryError as exc:
                writer.write(render_response(exc.status, {"code": exc.code, "message": exc.message}, close=True))
                await writer.drain()
                return
            locked = status == 200 and head.path == p.PATH_LOCK
            writer.write(render_response(status, doc, close=locked or not head.keep_alive))
            await writer.drain()
            if locked:
                # Answer first, then take the port down: the station learns the lock succeeded and
                # the next connection finds nothing listening.
                self._closing = asyncio.create_task(self._close_after_lock())
                return
            if not head.keep_alive:
                return

    async def _dispatch(self, head: RequestHead, body: bytes, peer: Peer) -> tuple[int, dict[str, Any]]:
        if head.path == p.PATH_DEVICE and head.method == "GET":
            return 200, await asyncio.to_thread(self._device.info)
        step = _STEPS.get(head.path)
        if step is None:
            return 404, {"code": "factory.not_found", "message": "not found"}
        if head.method != "POST":
            return 405, {"code": "factory.method", "message": "method not allowed"}
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise FactoryInvalid("request body is not JSON", code="factory.bad_request") from exc
        if not isinstance(doc, dict):
            raise FactoryInvalid("request body is not a JSON object", code="factory.bad_request")
        try:
            return 200, await asyncio.to_thread(self._device.handle, step, doc, peer)
        except FactoryError as exc:
            return exc.status, {"code": exc.code, "message": exc.message}

    async def _close_after_lock(self) -> None:
        await self.stop()
        self.locked.set()
        if self._on_locked is not None:
            await self._on_locked()
