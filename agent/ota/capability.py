"""The OTA capability: firmware API, post-boot confirmation, scheduled pulls.

Routes (all Administrator: ONVIF puts firmware upgrade and its status under Administrator, and the
status names versions an attacker would like to match exploits against):

    GET  /api/v1/firmware            slots, versions, rollback index, boot order, last result
    POST /api/v1/firmware            upload a bundle (application/octet-stream, streamed, capped)
    POST /api/v1/firmware/mark-good  confirm the booted slot after a health check
    POST /api/v1/firmware/check      pull now from update.server_url (pinned)

Blocking work (verification, the slot write, fsyncs) runs in a worker thread; one install at a time.

The installer and the puller (and the slot, boot-chooser, anti-rollback and pull modules) are built
in ``start()``, which the agent runs after HTTPS answers (agent.capabilities.AFTER_LISTENING), with
the imports in a worker thread; a route called before that builds them on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.capability import Role, Route
from agent.errors import ValidationError
from agent.http.util import client_address, current_user
from agent.ota.errors import OtaBusy, OtaError
from agent.state import ensure_dir

if TYPE_CHECKING:
    from agent.ota.installer import Installer
    from agent.ota.pull import Puller
    from agent.services import Services


def _import_chain() -> None:
    import agent.ota.config
    import agent.ota.pull
    import agent.ota.schedule  # noqa: F401


class OtaCapability:
    name = "ota"

    def __init__(self, services: Services) -> None:
        self._svc = services
        self._section = services.config.section("ota")
        self._actor: str | None = None
        self._source: str | None = None
        self._installer: Installer | None = None
        self._puller: Puller | None = None
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[Any] | None = None  # the installer call running in a thread
        self._tasks: list[asyncio.Task[None]] = []
        self.last_pull: dict[str, Any] | None = None

    @property
    def installer(self) -> Installer:
        if self._installer is None:
            from agent.ota.config import build_installer

            self._installer = build_installer(self._svc.config, self._svc.state, self._audit)
        return self._installer

    @property
    def _max_bytes(self) -> int:
        return self.installer.policy.limits.max_bundle_bytes

    @property
    def puller(self) -> Puller:
        if self._puller is None:
            from agent.ota.config import pull_config
            from agent.ota.pull import Puller

            pc = pull_config(self._svc.config)
            self._puller = Puller(self._svc.state.ota_dir / "download", self._max_bytes, pc.timeout_s, pc.retries,
                                  pc.backoff_s, pc.max_backoff_s)
        return self._puller

    # -- audit: the installer calls this from its worker thread; AuditLog.append is thread-safe --

    def _audit(self, event: str, outcome: str, details: Mapping[str, Any]) -> None:
        self._svc.audit.append(event, outcome=outcome, actor=self._actor, source=self._source, details=details)

    # -- capability protocol --

    def routes(self) -> Sequence[Route]:
        a = Role.ADMIN
        return [
            Route("GET", "/api/v1/firmware", self.get_status, a, summary="Firmware slots, versions, last result"),
            Route("POST", "/api/v1/firmware", self.upload, a,
                  summary="Upload and install a signed bundle (application/octet-stream)"),
            Route("POST", "/api/v1/firmware/mark-good", self.mark_good, a,
                  summary="Confirm the booted firmware after a health check"),
            Route("POST", "/api/v1/firmware/check", self.check_now, a, summary="Pull an update from the server now"),
        ]

    async def start(self) -> None:
        await asyncio.to_thread(_import_chain)
        # Built here (the constructor did it before the listener): a bad ota config still stops
        # the agent, now right after the listener came up instead of before it.
        self.puller  # noqa: B018 - builds the installer too
        if self._section.get("auto_mark_good", True):
            self._tasks.append(asyncio.create_task(self._auto_confirm()))
        self._tasks.append(asyncio.create_task(self._schedule_loop()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight])

    def status(self) -> dict[str, Any]:
        try:
            st = self.installer.status()
        except OtaError as exc:
            return {"error": exc.code}
        return {"booted": st["booted"], "boot_order": st["boot_order"], "rollback_index": st["rollback_index"],
                "last_result": st["last_result"]}

    # -- work in a thread, one at a time --

    async def _exclusive(self, actor: str | None, source: str | None, fn: Any, *args: Any) -> Any:
        if self._lock.locked():
            raise OtaBusy("an update operation is already running", code="ota.busy")
        async with self._lock:
            self._actor, self._source = actor, source
            # Shielded: cancelling the caller (stop()) cannot stop the thread, which keeps the
            # installer's lock until it returns; stop() waits for it instead of leaving it behind.
            fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
            self._inflight = fut
            try:
                return await asyncio.shield(fut)
            finally:
                self._actor = self._source = None

    # -- handlers --

    async def get_status(self, request: web.Request) -> web.Response:
        st = await asyncio.get_running_loop().run_in_executor(None, self.installer.status)
        st["last_pull"] = self.last_pull
        return web.json_response(st)

    async def upload(self, request: web.Request) -> web.Response:
        user = current_user(request)
        source = client_address(request)
        if request.content_type not in ("application/octet-stream", "application/vnd.rauc.bundle"):
            raise ValidationError("send the bundle as application/octet-stream", code="ota.upload_type")
        length = request.content_length
        if length is not None and length > self._max_bytes:
            self._svc.audit.append("firmware.upload", outcome="denied", actor=user.username, source=source,
                                   details={"reason": "ota.upload_too_large", "size": length})
            raise web.HTTPRequestEntityTooLarge(max_size=self._max_bytes, actual_size=length)
        if self._lock.locked():
            raise OtaBusy("an update operation is already running", code="ota.busy")
        incoming = ensure_dir(self._svc.state.ota_dir / "incoming")
        path = incoming / f"upload-{secrets.token_hex(8)}.raucb"
        loop = asyncio.get_running_loop()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        received = 0
        try:
            try:
                # Whatever the transport has (iter_any: no re-chunking), gathered without copying
                # and written with one writev per SPOOL_BYTES off the loop.
                pending: list[bytes] = []
                pending_bytes = 0
                async for chunk in request.content.iter_any():
                    received += len(chunk)
                    if received > self._max_bytes:
                        self._svc.audit.append("firmware.upload", outcome="denied", actor=user.username,
                                               source=source, details={"reason": "ota.upload_too_large"})
                        raise web.HTTPRequestEntityTooLarge(max_size=self._max_bytes, actual_size=received)
                    pending.append(chunk)
                    pending_bytes += len(chunk)
                    if pending_bytes >= SPOOL_BYTES or len(pending) >= SPOOL_IOV:
                        await loop.run_in_executor(None, _write_all, fd, pending)
                        pending, pending_bytes = [], 0
                if pending:
                    await loop.run_in_executor(None, _write_all, fd, pending)
                await loop.run_in_executor(None, os.fsync, fd)
            finally:
                os.close(fd)
            self._svc.audit.append("firmware.upload", outcome="success", actor=user.username, source=source,
                                   details={"size": received})
            res = await self._exclusive(user.username, source, self._install_file, path, "upload")
        finally:
            path.unlink(missing_ok=True)
        return web.json_response({"slot": res.slot, "version": res.version,
                                  "security_version": res.security_version, "reboot_required": True})

    def _install_file(self, path: Path, source: str) -> Any:
        return self.installer.install(path, source=source)

    async def mark_good(self, request: web.Request) -> web.Response:
        user = current_user(request)
        await self._health_check()
        result = await self._exclusive(user.username, client_address(request), self.installer.confirm)
        return web.json_response(result)

    async def check_now(self, request: web.Request) -> web.Response:
        user = current_user(request)
        result = await self._pull_and_install(user.username, client_address(request))
        return web.json_response(result)

    # -- background --

    async def _health_check(self) -> None:
        """The agent's own HTTPS service answers a TLS handshake (on loopback, or on the one address
        it is bound to)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # liveness probe of our own listener, no data exchanged
        bind = self._svc.config.bind
        host = "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bind  # noqa: S104 - comparing, not binding
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, self._svc.config.https_port, ssl=ctx), timeout=10)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def _auto_confirm(self) -> None:
        delay = float(self._section.get("confirm_delay_s", 10.0))
        await asyncio.sleep(delay)
        try:
            await self._exclusive("system", "boot", self.installer.reconcile)
            st = await asyncio.get_running_loop().run_in_executor(None, self.installer.status)
            booted = st["booted"]
            state = st["slots"][booted].get("state")
            # A new slot needs its confirmation; a good slot needs its boot counter back (U-Boot
            # took one attempt this boot: without this a good slot runs out after N reboots).
            if not (state == "installed" or (state == "good" and booted == st["intended"]
                                             and st["attempts_left"].get(booted, 0) < self.installer.policy.attempts)):
                return
            await self._health_check()
            await self._exclusive("system", "boot", self.installer.confirm)
        except (OtaError, OSError, TimeoutError) as exc:
            self._audit("firmware.mark_good", "failure", {"reason": getattr(exc, "code", "ota.health_check"),
                                                          "error": str(exc)[:200]})

    async def _pull_and_install(self, actor: str | None, source: str | None) -> dict[str, Any]:
        upd = self._svc.settings.current().update
        if not upd.server_url or not upd.pin_sha256:
            raise ValidationError("no update server configured", code="ota.no_server")
        started = dt.datetime.now(dt.UTC).isoformat()
        self._svc.audit.append("firmware.pull", outcome="info", actor=actor, source=source,
                               details={"url": upd.server_url[:200]})
        from agent.ota.pull import UpToDate

        try:
            path = await self.puller.fetch(upd.server_url, upd.pin_sha256)
        except UpToDate:
            self.last_pull = {"outcome": "up_to_date", "time": started}
            return {"up_to_date": True}
        except OtaError as exc:
            self._svc.audit.append("firmware.pull", outcome="failure", actor=actor, source=source,
                                   details={"reason": exc.code, "error": exc.message[:200]})
            self.last_pull = {"outcome": "failed", "reason": exc.code, "time": started}
            raise
        try:
            res = await self._exclusive(actor, source, self._install_file, path, "pull")
        except OtaError:
            self.puller.discard()
            raise
        self.puller.mark_installed()
        self.last_pull = {"outcome": "installed", "version": res.version, "time": started}
        return {"slot": res.slot, "version": res.version, "security_version": res.security_version,
                "reboot_required": True}

    async def _schedule_loop(self) -> None:
        from agent.ota.schedule import seconds_until_window

        interval = float(self._section.get("check_interval_s", 3600.0))
        while True:
            upd = self._svc.settings.current().update
            if not upd.auto or not upd.server_url:
                await asyncio.sleep(min(interval, 300.0))
                continue
            now = dt.datetime.now().astimezone()
            wait = seconds_until_window(now, upd.window_start, upd.window_end,
                                        jitter_s=float(self._section.get("window_jitter_s", 600.0)))
            await asyncio.sleep(wait)
            upd = self._svc.settings.current().update
            if upd.auto and upd.server_url:
                with contextlib.suppress(OtaError):
                    await self._pull_and_install("scheduler", "schedule")
            await asyncio.sleep(interval)


SPOOL_BYTES = 4 * 1024 * 1024
SPOOL_IOV = 512  # below IOV_MAX (1024)


def _write_all(fd: int, chunks: list[bytes]) -> None:
    views = [memoryview(c) for c in chunks if c]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
