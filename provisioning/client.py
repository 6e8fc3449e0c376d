"""HTTPS client for a device's factory endpoint (mutual TLS, one pinned device certificate)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from types import TracebackType
from typing import Any

from agent.factory import protocol as p
from agent.factory.errors import FactoryInvalid
from provisioning.errors import DeviceInvalid, DeviceRefused, DeviceUnreachable

_MAX_RESPONSE = 64 * 1024
_MAX_HEAD = 16 * 1024


class DeviceClient:
    """A deliberately small HTTP/1.1 client over one TLS connection.

    One connection for the whole run makes pinning exact (the certificate of the socket we talk
    over), and the responses we accept are tiny JSON documents with a Content-Length, so a bounded
    reader is simpler to trust than a general client. A dropped connection is re-opened and must
    present the same certificate.
    """

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext, timeout_s: float = 30.0) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._timeout = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.pinned: str | None = None  # SHA-256 of the device's factory-state certificate

    async def __aenter__(self) -> DeviceClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer, self._reader = self._writer, None, None
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, ssl=self._ssl, server_hostname=None),
                self._timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise DeviceUnreachable(f"device unreachable: {type(exc).__name__}: {exc}") from exc
        assert self._writer is not None
        ssl_object = self._writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            raise DeviceInvalid("device presented no certificate", code="provision.no_device_cert")
        fp = p.sha256_hex(der)
        # Every step of one run must talk to the same endpoint; a swap mid-run (another device,
        # a man in the middle on the line) is refused.
        if self.pinned is None:
            self.pinned = fp
        elif fp != self.pinned:
            raise DeviceInvalid("device certificate changed during the run", code="provision.pin_mismatch")

    async def _exchange(self, method: str, path: str, payload: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        self._writer.write(head + payload)
        await self._writer.drain()
        raw_head = await self._reader.readuntil(b"\r\n\r\n")
        if len(raw_head) > _MAX_HEAD:
            raise DeviceInvalid("response header too large", code="provision.bad_response")
        lines = raw_head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise DeviceInvalid("bad status line", code="provision.bad_response")
        length = None
        keep = True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value.strip())
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                keep = False
        if length is None or length > _MAX_RESPONSE:
            raise DeviceInvalid("response without a bounded Content-Length", code="provision.bad_response")
        body = await self._reader.readexactly(length)
        if not keep:
            await self._close()
        return int(parts[1]), body

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        for attempt in (1, 2):
            try:
                status, raw = await asyncio.wait_for(self._exchange(method, path, payload), self._timeout)
                break
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                await self._close()
                # A keep-alive connection the device closed while idle: reconnect once (same pin).
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise DeviceUnreachable(f"device unreachable: {type(exc).__name__}: {exc}") from exc
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise DeviceInvalid("device response is not JSON", code="provision.bad_response") from exc
        if not isinstance(doc, dict):
            raise DeviceInvalid("device response is not an object", code="provision.bad_response")
        if status != 200:
            code = doc.get("code") if isinstance(doc.get("code"), str) else "?"
            raise DeviceRefused(f"device refused {path}: {code}", code=f"provision.device.{code}")
        return doc

    async def info(self) -> p.DeviceInfo:
        doc = await self._request("GET", p.PATH_DEVICE)
        try:
            return p.DeviceInfo.from_json(doc)
        except FactoryInvalid as exc:
            raise DeviceInvalid(f"device info: {exc.message}", code="provision.bad_info") from exc

    async def keys(self, serial: str) -> dict[str, str]:
        doc = await self._request("POST", p.PATH_KEYS, {"serial": serial})
        csrs = doc.get("csrs")
        if not isinstance(csrs, dict) or not all(isinstance(csrs.get(k), str) for k in p.KEY_KINDS):
            raise DeviceInvalid("device returned no CSRs", code="provision.bad_response")
        return {k: str(csrs[k]) for k in p.KEY_KINDS}

    async def install(self, chains: dict[str, str]) -> None:
        await self._request("POST", p.PATH_CERTS, {f"{k}_chain": v for k, v in chains.items()})

    async def challenge(self, nonce: bytes) -> dict[str, bytes]:
        doc = await self._request("POST", p.PATH_CHALLENGE, {"nonce": p.b64e(nonce)})
        sigs = doc.get("signatures")
        if not isinstance(sigs, dict):
            raise DeviceInvalid("device returned no signatures", code="provision.bad_response")
        try:
            return {k: p.b64d(sigs.get(k), max_len=256, what=k) for k in p.KEY_KINDS}
        except FactoryInvalid as exc:
            raise DeviceInvalid(exc.message, code="provision.bad_response") from exc

    async def setup_code(self, code: str) -> None:
        await self._request("POST", p.PATH_SETUP_CODE, {"code": code})

    async def lock(self, idevid_sha256: str) -> None:
        await self._request("POST", p.PATH_LOCK, {"idevid_sha256": idevid_sha256})
