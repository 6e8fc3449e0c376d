"""Forwarding audit records to a remote syslog server over TLS (RFC 5424 messages, RFC 5425 framing).

The server certificate is always validated: chain to ``syslog.ca_pem`` (the only trust anchor -
the system store is never consulted, so a public CA cannot impersonate the collector) and the
name ``syslog.server_name`` (or ``syslog.host``). There is no "insecure" switch.

The forwarding cursor (last seq sent to this target) is kept in ``forward-cursor.json`` next to
the segments, MACed with the log key and bound to the log id and the target, saved at most every
few seconds and at stop: after an agent restart the forwarder resumes from it (re-sending up to a
few seconds' worth, never skipping). A missing, foreign or forged cursor falls back to "from now".

Delivery is at-least-once and gap-free while the records exist on the device: a record leaves the
in-memory queue only after it was written and the socket drained; after a disconnect sending
resumes with the first record not yet drained, so the collector may see a record twice (``seq``
lets it deduplicate) but never a silent gap. The queue is bounded: on overflow the oldest entries
are discarded (``overflowed``) and the sender later re-reads that range, verified, from the
on-device log (``backfilled``). Only records already rotated off the device by then are lost,
and counted (``dropped`` in status). RFC 5425 has no application acknowledgement: bytes the
kernel accepted just before a connection dies can still be lost in transit; the MAC chain in the
forwarded lines lets the collector detect such a gap.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.audit.errors import AuditError, ForwardError
from agent.audit.log import AuditLog
from agent.audit.record import AuditRecord, LineError, open_line, seal_line
from agent.audit.rfc5424 import format_message, frame
from agent.audit.target import SyslogTarget as SyslogTarget  # its home before the split
from agent.audit.verify import ChainVerifier, read_bounded
from agent.state import atomic_write
from agent.tlsconfig import client_context, load_chain_from_memory

ClientIdentity = Callable[[], tuple[bytes, bytes]]  # (certificate chain PEM, private key PEM)
AuditHook = Callable[[str, str, dict[str, Any]], Awaitable[None]]  # (event, outcome, details)

_MAX_BATCH = 256
CURSOR_FILE = "forward-cursor.json"
CURSOR_DOMAIN = b"camera-audit-forward-cursor-v1\x00"
_CURSOR_SAVE_INTERVAL_S = 5.0


def build_context(target: SyslogTarget, client_identity: ClientIdentity | None = None) -> ssl.SSLContext:
    try:
        ctx = client_context(cadata=target.ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise ForwardError(
            f"syslog.ca_pem is not a usable CA: {exc}", code="audit.forward_bad_ca", field="syslog.ca_pem"
        ) from exc
    if client_identity is not None:
        chain, key = client_identity()
        load_chain_from_memory(ctx, chain, key)
    return ctx


class AuditForwarder:
    def __init__(
        self,
        log: AuditLog,
        target: SyslogTarget,
        *,
        hostname: str,
        queue_size: int = 4096,
        client_identity: ClientIdentity | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 60.0,
        connect_timeout: float = 10.0,
        audit_hook: AuditHook | None = None,
    ) -> None:
        self._log = log
        self._target = target
        self._hostname = hostname
        self._ctx = build_context(target, client_identity)
        self._queue: collections.deque[AuditRecord] = collections.deque()
        self._queue_size = queue_size
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._audit_hook = audit_hook
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state = "stopped"
        self.sent = 0
        self.dropped = 0  # lost: overflowed and no longer on the device when backfilling
        self.overflowed = 0
        self.backfilled = 0
        self._cursor = 0  # highest seq forwarded (or given up on); records above it are owed
        self._saved_cursor = 0
        self._saved_at = 0.0
        self._seen = 0  # highest seq handed to us by the writer (or the head at start)
        self.connects = 0
        self.last_forwarded_seq: int | None = None
        self.last_error: str | None = None
        self._last_reported: str | None = None

    @property
    def target(self) -> SyslogTarget:
        return self._target

    async def start(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        # Subscribe first: a record appended while the cursor loads is then either queued or
        # below the head read next, never in neither.
        self._unsubscribe = self._log.subscribe(self._from_writer)
        self._seen = max(self._seen, self._log.head_seq)
        # Owed to the collector: everything after the saved cursor, or after now.
        cursor, valid = await asyncio.to_thread(self._load_cursor)
        self._cursor = self._saved_cursor = cursor
        if not valid:
            # Persist "from now" at once, so records written before the first send survive a
            # restart of the agent as owed, not as forgotten.
            with contextlib.suppress(OSError, AuditError):
                await asyncio.to_thread(self._save_cursor, cursor)
        self.state = "connecting"
        self._task = asyncio.create_task(self._run(), name="audit-forwarder")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            if self._cursor != self._saved_cursor:
                with contextlib.suppress(OSError, AuditError):
                    await asyncio.to_thread(self._save_cursor, self._cursor)
        self.state = "stopped"

    @property
    def _target_id(self) -> str:
        return f"{self._target.host}:{self._target.port}/{self._target.tls_name}"

    def _load_cursor(self) -> tuple[int, bool]:
        """(cursor, whether it came from a valid saved file)."""
        head = self._log.head_seq
        try:
            raw = read_bounded(self._log.directory / CURSOR_FILE, 4096)
            obj, _ = open_line(self._log.key, CURSOR_DOMAIN, b"", raw.rstrip(b"\n"))
        except (AuditError, LineError):
            return head, False
        seq = obj.get("seq")
        if obj.get("log") != self._log.log_id or obj.get("target") != self._target_id:
            return head, False
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= head:
            return head, False
        return seq, True

    def _save_cursor(self, seq: int) -> None:
        line, _ = seal_line(self._log.key, CURSOR_DOMAIN, b"",
                            {"v": 1, "log": self._log.log_id, "target": self._target_id, "seq": seq})
        atomic_write(self._log.directory / CURSOR_FILE, line + b"\n")
        self._saved_cursor = seq

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "target": f"{self._target.host}:{self._target.port}",
            "server_name": self._target.tls_name,
            "queued": len(self._queue),
            "queue_size": self._queue_size,
            "sent": self.sent,
            "dropped": self.dropped,
            "overflowed": self.overflowed,
            "backfilled": self.backfilled,
            "connects": self.connects,
            "last_forwarded_seq": self.last_forwarded_seq,
            "last_error": self.last_error,
        }

    def enqueue(self, rec: AuditRecord) -> None:
        """Loop-side: add a record, discarding the oldest when full (the sender backfills it)."""
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self.overflowed += 1
        self._queue.append(rec)
        self._seen = max(self._seen, rec.seq)
        self._wake.set()

    def _from_writer(self, rec: AuditRecord) -> None:
        # Runs in the writer thread under the log's lock: only hand over.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self.enqueue, rec)

    async def _run(self) -> None:
        backoff = self._backoff_initial
        while True:
            writer: asyncio.StreamWriter | None = None
            try:
                self.state = "connecting"
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self._target.host,
                        self._target.port,
                        ssl=self._ctx,
                        server_hostname=self._target.tls_name,
                        ssl_handshake_timeout=self._connect_timeout,
                    ),
                    self._connect_timeout + 1,
                )
                assert writer is not None
                self.connects += 1
                self.state = "connected"
                self.last_error = None
                backoff = self._backoff_initial
                await self._report("success", None)
                await self._pump(reader, writer)
            except asyncio.CancelledError:
                raise
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
                self.last_error = _describe(exc)
                self.state = "backoff"
                await self._report("failure", self.last_error)
            finally:
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer.wait_closed(), 2)
            # Jitter keeps a fleet of cameras from reconnecting in lockstep after a collector outage.
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self._backoff_max)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A syslog server never sends: any read completing means the connection is closing.
        closed = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                while self._queue and self._queue[0].seq <= self._cursor:
                    self._queue.popleft()  # already sent by a backfill
                # Owed but not queued: discarded on overflow, or written before a restart.
                end = self._queue[0].seq if self._queue else self._seen + 1
                if self._cursor + 1 < end:
                    await self._backfill(writer, end)
                    continue
                if self._queue:
                    batch = [self._queue[i] for i in range(min(len(self._queue), _MAX_BATCH))]
                    await self._send(writer, batch)
                    for r in batch:
                        # Only now is it safe to forget them; entries may have been discarded
                        # from the left meanwhile, so pop by identity.
                        if self._queue and self._queue[0] is r:
                            self._queue.popleft()
                    continue
                self._wake.clear()
                wake = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait({wake, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not wake.done():
                    wake.cancel()
                if closed in done:
                    raise ConnectionError("syslog server closed the connection")
        finally:
            if not closed.done():
                closed.cancel()

    async def _send(self, writer: asyncio.StreamWriter, batch: list[AuditRecord]) -> None:
        writer.write(b"".join(frame(format_message(r, self._hostname)) for r in batch))
        await writer.drain()
        self.sent += len(batch)
        self.last_forwarded_seq = batch[-1].seq
        self._cursor = max(self._cursor, batch[-1].seq)
        now = time.monotonic()
        if now - self._saved_at >= _CURSOR_SAVE_INTERVAL_S:
            self._saved_at = now
            try:
                await asyncio.to_thread(self._save_cursor, self._cursor)
            except (OSError, AuditError) as exc:  # forwarding goes on; a restart re-sends more
                self.last_error = f"cursor not saved: {exc}"

    async def _backfill(self, writer: asyncio.StreamWriter, end: int) -> None:
        """Send records cursor+1 .. end-1 (discarded from the queue) from the on-device log."""
        first = self._cursor + 1
        try:
            recs = await asyncio.to_thread(self._read_range, first, end, self._queue_size)
        except AuditError as exc:  # tampered or unreadable: nothing trustworthy to send
            recs = []
            self.last_error = f"backfill: {exc.code}"
        if not recs or recs[0].seq > first:
            # Rotated off the device (or unreadable) before we got to it: lost, and counted.
            upto = recs[0].seq if recs else end
            self.dropped += upto - first
            self._cursor = upto - 1
        if recs:
            for i in range(0, len(recs), _MAX_BATCH):
                await self._send(writer, recs[i : i + _MAX_BATCH])
            self.backfilled += len(recs)

    def _read_range(self, first: int, end: int, limit: int) -> list[AuditRecord]:
        """Blocking: verified records with first <= seq < end (at most ``limit``), read from a
        snapshot of the log. Each one is authenticated and chained; the head check is not needed
        because the range ends below records this process saw being written."""
        snap = self._log.snapshot()
        lim = self._log.limits
        verifier = ChainVerifier(self._log.key, lim)
        out: list[AuditRecord] = []
        for i, seg in enumerate(snap.segments):
            data = read_bounded(seg.path, lim.max_segment_read_bytes, seg.size)
            for rec in verifier.feed(seg.id, data, last=i == len(snap.segments) - 1):
                if rec.seq >= end or len(out) >= limit:
                    return out
                if rec.seq >= first:
                    out.append(rec)
        return out

    async def _report(self, outcome: str, error: str | None) -> None:
        # Record transitions only, so an unreachable collector does not flood the log.
        key = outcome if error is None else f"{outcome}:{error}"
        if key == self._last_reported or self._audit_hook is None:
            return
        self._last_reported = key
        details: dict[str, Any] = {"target": f"{self._target.host}:{self._target.port}"}
        if error is not None:
            details["error"] = error
        with contextlib.suppress(Exception):
            await self._audit_hook("audit.forward", outcome, details)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    text = str(exc) or type(exc).__name__
    return text[:200]
