"""Pull a bundle from the vendor's HTTPS update server: certificate pinning, no fallback, resume.

Trust model (ER-01 2.7a): ``update.pin_sha256`` is the SHA-256 of the server certificate's
SubjectPublicKeyInfo (survives certificate renewal with the same key). The TLS session is made with
the device's hardened client policy (TLS 1.2+, ECDHE + AEAD only); the pin is checked on the
peer certificate before a single byte of the response is used, and there is no fallback: no plain
HTTP, no retry without the pin, no other server. The bundle's own signature is still checked by the
installer - the pin only keeps the device from talking to anyone else.

Robustness: partial downloads resume with ``Range`` + ``If-Range`` (ETag), transient failures
retry with capped exponential backoff plus jitter, the size is capped by ``ota.max_bundle_bytes``.
The decision logic is pure (``plan_request``, ``accept_response``, ``backoff_delays``); ``fetch`` is
the thin aiohttp adapter.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.ota.errors import OtaError
from agent.state import atomic_write_json, ensure_dir, read_json
from agent.tlsconfig import client_context

CHUNK = 256 * 1024


class PullError(OtaError):
    code = "ota.pull_failed"
    status = 502


class PinMismatch(PullError):
    code = "ota.pin_mismatch"


class UpToDate(PullError):
    """The server's bundle is the one installed last (ETag match, 304)."""

    code = "ota.up_to_date"
    status = 200


def spki_sha256(cert_der: bytes) -> str:
    cert = x509.load_der_x509_certificate(cert_der)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def check_pin(cert_der: bytes | None, pin_sha256: str) -> None:
    if not cert_der:
        raise PinMismatch("server presented no certificate", code="ota.pin_mismatch")
    if not hmac.compare_digest(spki_sha256(cert_der), pin_sha256.lower()):
        raise PinMismatch("server key does not match the pinned key", code="ota.pin_mismatch")


def backoff_delays(retries: int, base: float, cap: float, rng: random.Random | None = None) -> Iterator[float]:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**n))."""
    r = rng or random.SystemRandom()
    for n in range(retries):
        yield r.uniform(0, min(cap, base * (2**n)))


@dataclass(frozen=True)
class ResumeState:
    url: str
    etag: str | None
    have: int


def plan_request(url: str, saved: ResumeState | None, part_size: int,
                 installed: ResumeState | None = None) -> dict[str, str]:
    """Headers for the next GET: resume only the same URL with a strong ETag; otherwise ask
    whether the server still has the bundle we installed last."""
    if saved and saved.url == url and saved.etag and not saved.etag.startswith("W/") and part_size > 0:
        return {"Range": f"bytes={part_size}-", "If-Range": saved.etag}
    if installed and installed.url == url and installed.etag:
        return {"If-None-Match": installed.etag}
    return {}


def accept_response(status: int, headers: dict[str, str], requested_from: int | None,
                    max_bytes: int) -> tuple[bool, int]:
    """(append?, expected total size). Raises PullError for anything we will not use.

    ``requested_from`` is the Range start we asked for, None when we asked for the whole file.
    """
    if status == 304:
        raise UpToDate("the server offers the bundle installed last", code="ota.up_to_date")
    if status == 206:
        cr = headers.get("Content-Range", "")
        unit, _, rest = cr.partition(" ")
        span, _, total = rest.partition("/")
        start, _, _end = span.partition("-")
        if (requested_from is None or unit != "bytes" or not start.isdigit() or not total.isdigit()
                or int(start) != requested_from):
            raise PullError("bad Content-Range", code="ota.pull_protocol")
        size = int(total)
        append = True
    elif status == 200:
        length = headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else -1
        append = False
    else:
        raise PullError(f"update server answered {status}", code="ota.pull_http")
    if size > max_bytes:
        raise PullError("bundle larger than allowed", code="ota.pull_too_large")
    return append, size


@dataclass
class Puller:
    directory: Path
    max_bytes: int
    timeout_s: float = 60.0
    retries: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 300.0
    sleep: Callable[[float], Any] = asyncio.sleep

    @property
    def part(self) -> Path:
        return self.directory / "download.part"

    @property
    def meta(self) -> Path:
        return self.directory / "download.json"

    @property
    def installed_meta(self) -> Path:
        return self.directory / "installed.json"

    def mark_installed(self) -> None:
        """Remember the URL/ETag of the bundle just installed, then drop the download."""
        saved = self._saved()
        if saved is not None and saved.etag:
            atomic_write_json(self.installed_meta, {"url": saved.url, "etag": saved.etag, "have": 0})
        self.discard()

    def _saved(self, path: Path | None = None) -> ResumeState | None:
        try:
            obj = read_json(path or self.meta, max_bytes=8192)
            return ResumeState(str(obj["url"]), obj.get("etag"), int(obj.get("have", 0)))
        except (FileNotFoundError, KeyError, TypeError, ValueError, OtaError):
            return None

    async def fetch(self, url: str, pin_sha256: str) -> Path:
        """Download ``url`` into ``directory/download.part``; returns the complete file."""
        if not url.startswith("https://"):
            raise PullError("update server URL must be https://", code="ota.pull_url")
        ensure_dir(self.directory)
        last: Exception | None = None
        for delay in [0.0, *backoff_delays(self.retries, self.backoff_s, self.max_backoff_s)]:
            if delay:
                await self.sleep(delay)
            try:
                return await self._attempt(url, pin_sha256)
            except (PinMismatch, UpToDate):
                raise  # no fallback and no retry: a wrong key is not a transient failure
            except (aiohttp.ClientError, TimeoutError, PullError, OSError) as exc:
                if isinstance(exc, PullError) and exc.code in ("ota.pull_too_large", "ota.pull_url"):
                    raise
                last = exc
        raise PullError(f"download failed after retries: {last}", code="ota.pull_failed")

    async def _attempt(self, url: str, pin: str) -> Path:
        saved = self._saved()
        have = self.part.stat().st_size if self.part.exists() else 0
        headers = plan_request(url, saved, have, self._saved(self.installed_meta))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, connector=PinnedConnector(pin)) as http, \
                http.get(url, headers=headers, allow_redirects=False) as resp:
            if resp.status == 416:  # our partial file no longer fits the server's: start over
                self.discard()
                raise PullError("range not satisfiable, restarting the download", code="ota.pull_restart")
            append, total = accept_response(resp.status, dict(resp.headers),
                                            have if "Range" in headers else None, self.max_bytes)
            etag = resp.headers.get("ETag")
            loop = asyncio.get_running_loop()
            fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o600)
            try:
                written = have if append else 0
                atomic_write_json(self.meta, {"url": url, "etag": etag, "have": written})
                async for chunk in resp.content.iter_chunked(CHUNK):
                    written += len(chunk)
                    if written > self.max_bytes:
                        raise PullError("bundle larger than allowed", code="ota.pull_too_large")
                    await loop.run_in_executor(None, os.write, fd, chunk)
                await loop.run_in_executor(None, os.fsync, fd)
            finally:
                os.close(fd)
            if total >= 0 and written != total:
                raise PullError("download ended early", code="ota.pull_incomplete")
        return self.part

    def discard(self) -> None:
        for p in (self.part, self.meta):
            p.unlink(missing_ok=True)


class PinnedConnector(aiohttp.TCPConnector):
    """Checks the SPKI pin right after the TLS handshake, before the request is written."""

    def __init__(self, pin_sha256: str) -> None:
        super().__init__(ssl=_pinned_context(), force_close=True)
        self._pin = pin_sha256

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109 - aiohttp's
        proto = await super()._create_connection(req, traces, timeout)
        transport = proto.transport
        ssl_obj = transport.get_extra_info("ssl_object") if transport is not None else None
        try:
            check_pin(ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None, self._pin)
        except PinMismatch:
            if transport is not None:
                transport.abort()
            raise
        return proto


def _pinned_context() -> ssl.SSLContext:
    """Hardened client policy; chain validation is replaced by the SPKI pin checked per response."""
    ctx = client_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
