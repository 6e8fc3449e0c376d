"""The audit capability: export and verify over HTTPS (admin only), syslog forwarding from settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.audit.errors import AuditError, AuditTampered, ForwardError
from agent.audit.limits import AuditLimits
from agent.audit.target import SyslogTarget
from agent.audit.verify import ChainVerifier, VerifyReport, quarantined, read_bounded
from agent.capability import Role, Route
from agent.errors import ValidationError
from agent.http.util import client_address, current_user

if TYPE_CHECKING:
    from agent.audit.forward import AuditForwarder
    from agent.audit.log import AuditLog, LogSnapshot
    from agent.services import Services

log = logging.getLogger(__name__)

_FORMATS = ("jsonl", "rfc5424")


def parse_since(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or len(raw) > 16:
        raise ValidationError(
            "since must be a non-negative integer", code="audit.since_invalid", field="since"
        )
    return int(raw)


def verify_snapshot(snap: LogSnapshot, key: bytes, limits: AuditLimits) -> VerifyReport:
    """Blocking: verify a snapshot's segments (run off the loop)."""
    verifier = ChainVerifier(key, limits)
    for i, seg in enumerate(snap.segments):
        data = read_bounded(seg.path, limits.max_segment_read_bytes, seg.size)
        for _ in verifier.feed(seg.id, data, last=i == len(snap.segments) - 1):
            pass
    return verifier.finish(snap.head)


class AuditCapability:
    name = "audit"

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._log: AuditLog = svc.audit
        # The forwarder's queue bound comes from the config's "audit" section; parsing bounds
        # come from the log itself so the API verifies with the limits the writer used.
        self._forward_queue = AuditLimits.from_section(svc.config.section("audit")).forward_queue
        self._hostname = svc.config.device.serial or socket.gethostname()
        self._forwarder: AuditForwarder | None = None
        self._forward_error: str | None = None
        self._lock = asyncio.Lock()
        self._subscribed = False

    def routes(self) -> Sequence[Route]:
        return [
            Route(
                "GET",
                "/api/v1/audit",
                self.export,
                Role.ADMIN,
                summary="Export audit records as JSON lines (?since=SEQ, ?format=jsonl|rfc5424), verified",
            ),
            Route(
                "GET",
                "/api/v1/audit/verify",
                self.verify,
                Role.ADMIN,
                summary="Verify the audit chain and report",
            ),
        ]

    async def start(self) -> None:
        if not self._subscribed:
            self._svc.settings.subscribe(self._on_settings)
            self._subscribed = True
        await self._apply(self._svc.settings.current().syslog)

    async def stop(self) -> None:
        async with self._lock:
            if self._forwarder is not None:
                await self._forwarder.stop()
                self._forwarder = None

    def status(self) -> dict[str, Any]:
        fwd: dict[str, Any]
        if self._forwarder is not None:
            fwd = self._forwarder.status()
        else:
            fwd = {
                "state": "off" if self._forward_error is None else "misconfigured",
                "error": self._forward_error,
            }
        out: dict[str, Any] = {**self._log.status(), "forwarder": fwd}
        warnings = []
        if out.get("quarantined"):
            warnings.append("audit: tampering was detected; the tampered log is kept in audit/quarantine")
        if self._forward_error is not None:
            warnings.append(f"audit: syslog forwarding misconfigured: {self._forward_error}")
        elif fwd.get("dropped"):
            warnings.append(f"audit: {fwd['dropped']} records were not forwarded (queue overflow)")
        out["warnings"] = warnings
        return out

    # --- forwarding ------------------------------------------------------------------------------

    async def _on_settings(self, old: Any, new: Any) -> None:
        if old.syslog != new.syslog:
            await self._apply(new.syslog)

    async def _apply(self, syslog: Any) -> None:
        async with self._lock:
            try:
                target = SyslogTarget.from_settings(syslog)
            except ForwardError as exc:
                target = None
                self._forward_error = exc.message
                await self._log.record("audit.forward", outcome="failure", details={"error": exc.code})
            else:
                self._forward_error = None
            if self._forwarder is not None:
                if target == self._forwarder.target:
                    return
                await self._forwarder.stop()
                self._forwarder = None
            if target is None:
                return
            # The forwarder's module loads only when forwarding is configured (it is off by
            # default); when it is, this still runs in start(), before the listener, as before.
            from agent.audit.forward import AuditForwarder

            try:
                fwd = AuditForwarder(
                    self._log,
                    target,
                    hostname=self._hostname,
                    queue_size=self._forward_queue,
                    audit_hook=self._audit_hook,
                )
            except ForwardError as exc:
                self._forward_error = exc.message
                await self._log.record("audit.forward", outcome="failure", details={"error": exc.code})
                return
            self._forwarder = fwd
            await fwd.start()

    async def _audit_hook(self, event: str, outcome: str, details: dict[str, Any]) -> None:
        await self._log.record(event, outcome=outcome, details=details)

    # --- HTTP -------------------------------------------------------------------------------------

    async def export(self, request: web.Request) -> web.StreamResponse:
        user = current_user(request)
        src = client_address(request)
        since = parse_since(request.query.get("since"))
        fmt = request.query.get("format", "jsonl")
        if fmt not in _FORMATS:
            raise ValidationError(
                "format must be jsonl or rfc5424", code="audit.format_invalid", field="format"
            )
        # Recorded before reading, so the export of the log shows itself being exported.
        await self._log.record(
            "audit.export",
            outcome="success",
            actor=user.username,
            source=src,
            details={"since": since, "format": fmt},
        )
        snap = await asyncio.to_thread(self._log.snapshot)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson" if fmt == "jsonl" else "text/plain; charset=utf-8",
                "Cache-Control": "no-store",
                "Content-Disposition": 'attachment; filename="audit.jsonl"'
                if fmt == "jsonl"
                else 'attachment; filename="audit.log"',
            }
        )
        await resp.prepare(request)
        verifier = ChainVerifier(self._log.key, self._log.limits)
        try:
            for i, seg in enumerate(snap.segments):
                last = i == len(snap.segments) - 1
                chunk = await asyncio.to_thread(
                    self._render_segment, verifier, seg.id, seg.path, seg.size, last, since, fmt
                )
                if chunk:
                    await resp.write(chunk)
            verifier.finish(snap.head)
        except (AuditTampered, AuditError) as exc:
            # Headers are gone already: the only honest signal left is an aborted transfer (the
            # client sees a truncated chunked body, never a "complete" export).
            await self._log.record(
                "audit.export",
                outcome="failure",
                actor=user.username,
                source=src,
                details={"code": exc.code, "seq": getattr(exc, "seq", None)},
            )
            if request.transport is not None:
                request.transport.abort()
            return resp
        await resp.write_eof()
        return resp

    def _render_segment(
        self, verifier: ChainVerifier, sid: int, path: Any, size: int, last: bool, since: int, fmt: str
    ) -> bytes:
        from agent.audit.rfc5424 import render

        data = read_bounded(path, self._log.limits.max_segment_read_bytes, size)
        return b"".join(
            render(r, fmt, self._hostname) for r in verifier.feed(sid, data, last=last) if r.seq >= since
        )

    async def verify(self, request: web.Request) -> web.Response:
        user = current_user(request)
        src = client_address(request)
        snap = await asyncio.to_thread(self._log.snapshot)
        body: dict[str, Any]
        try:
            report = await asyncio.to_thread(verify_snapshot, snap, self._log.key, self._log.limits)
        except AuditTampered as exc:
            body = {"ok": False, "error": exc.to_json()}
        else:
            body = report.to_json()
        q = quarantined(self._log.directory)
        body["quarantined"] = q
        if q:
            body["ok"] = False
        await self._log.record(
            "audit.verify",
            outcome="success" if body["ok"] else "failure",
            actor=user.username,
            source=src,
            details={"ok": body["ok"], "code": body.get("error", {}).get("code")},
        )
        with contextlib.suppress(KeyError):
            if body["error"]["code"]:
                log.warning("audit verification failed: %s", body["error"])
        return web.json_response(body, headers={"Cache-Control": "no-store"})
