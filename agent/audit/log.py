"""The audit log writer: append-only segments, fsync per record, rotation and a MACed head pointer.

Durability: each record is one ``write`` of a whole line to an O_APPEND descriptor followed by
``fsync``; only then is ``head.json`` replaced atomically. A kill -9 or power cut therefore leaves
at most a torn LAST line and a head pointer at most one record behind. On open the writer verifies
the log (checkpoint.py: unchanged segments via their MACed summaries, the rest record by record,
with exactly the verdict of full verification); a torn tail is cut off and an ``audit.recovered``
record says how many bytes went, so the repaired chain verifies again. Any other failure is
tampering: the segments, head and checkpoint are moved, untouched, to ``quarantine/<time>/`` as
evidence and a new log starts whose second record is
``audit.tamper_detected`` with the verifier's code, seq and reason.

Rotation is recorded in the chain: ``audit.rotate`` ends a full segment, ``audit.segment`` starts
the next one naming the previous segment's last seq and MAC, and when more than ``max_segments``
exist an ``audit.anchor`` record (written BEFORE the oldest files are unlinked) names the first
retained segment, seq and MAC. A verifier can thus tell rotation from deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.audit.checkpoint import CHECKPOINT_FILE, MODE_CHECKPOINT, open_directory, write_checkpoint
from agent.audit.errors import AuditError, AuditTampered
from agent.audit.limits import MIB, AuditLimits
from agent.audit.record import (
    EV_ANCHOR,
    EV_GENESIS,
    EV_RECOVERED,
    EV_ROTATE,
    EV_SEGMENT,
    EV_TAMPER,
    FORMAT_VERSION,
    HEAD_DOMAIN,
    RECORD_DOMAIN,
    ZERO_MAC,
    AuditRecord,
    canonical_json,
    check_event,
    format_time,
    seal_line,
)
from agent.audit.verify import (
    HEAD_FILE,
    QUARANTINE_DIR,
    SegmentSummary,
    SegmentTracker,
    VerifyReport,
    list_segments,
    read_head,
    segment_name,
)
from agent.state import atomic_write, ensure_dir, fsync_dir

Listener = Callable[[AuditRecord], None]

_MAX_FIELD = 256
# Room for the rotate/segment/anchor records written on top of a full segment.
_ROTATION_SLACK = 16


@dataclass(frozen=True)
class SegmentSnapshot:
    id: int
    path: Path
    size: int


@dataclass(frozen=True)
class LogSnapshot:
    """A consistent view for readers: segments and sizes as of one completed append."""

    segments: tuple[SegmentSnapshot, ...]
    head: bytes | None


class AuditLog:
    def __init__(
        self,
        directory: Path,
        key: bytes,
        *,
        clock: Callable[[], float] = time.time,
        max_segment_bytes: int = MIB,
        max_segments: int = 8,
        limits: AuditLimits | None = None,
    ) -> None:
        if len(key) < 16:
            raise AuditError("audit MAC key too short", code="audit.config")
        if max_segments < 2:
            raise AuditError("max_segments must be at least 2", code="audit.config")
        self._limits = limits or AuditLimits()
        if max_segment_bytes < 4 * self._limits.max_line_bytes:
            raise AuditError("max_segment_bytes must hold several maximal records", code="audit.config")
        self._dir = directory
        self._key = key
        self._clock = clock
        self._max_segment_bytes = max_segment_bytes
        self._max_segments = max_segments
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._closed = False
        self._fd: int | None = None
        # Chain state.
        self._log_id = ""
        self._seq = 0
        self._seg_id = 0
        self._seg_size = 0
        self._seg_chain = ZERO_MAC  # MAC of the last record in the current segment
        self._last_mac = ZERO_MAC
        self._pending_segment: int | None = None  # next record opens this segment
        # Checkpoint state: summaries of the retained closed segments, the open one's running one.
        self._closed_segments: dict[int, SegmentSummary] = {}
        self._tracker: SegmentTracker | None = None
        self._checkpoint_current = False
        self._checkpoint_error: str | None = None
        self.opened_with: VerifyReport | None = None
        self.open_failure: AuditTampered | None = None
        self.open_stats: dict[str, Any] = {}
        ensure_dir(directory)
        with self._lock:
            self._open()
            self._save_checkpoint()

    # --- public API (docs/contracts.md) -----------------------------------------------------------

    def append(
        self,
        event: str,
        *,
        outcome: str,
        actor: str | None = None,
        source: str | None = None,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self.append_record(event, outcome=outcome, actor=actor, source=source, target=target, details=details)

    def append_record(
        self,
        event: str,
        *,
        outcome: str,
        actor: str | None = None,
        source: str | None = None,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        check_event(event, outcome)
        clean = self._bound_details(details)
        with self._lock:
            if self._closed:
                raise AuditError("audit log is closed", code="audit.closed")
            probe = self._build(event, outcome, actor, source, target, clean)
            if self._needs_rotation(len(probe) + 1):
                self._rotate()
            return self._emit(event, outcome, actor, source, target, clean)

    async def record(
        self,
        event: str,
        *,
        outcome: str,
        actor: str | None = None,
        source: str | None = None,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        # One writer thread: calls made in order on the loop are written in that order.
        check_event(event, outcome)
        call = functools.partial(
            self.append,
            event,
            outcome=outcome,
            actor=actor,
            source=source,
            target=target,
            details=None if details is None else dict(details),
        )
        try:
            fut = asyncio.get_running_loop().run_in_executor(self._executor, call)
        except RuntimeError as exc:  # executor shut down by close()
            raise AuditError("audit log is closed", code="audit.closed") from exc
        await fut

    def close(self) -> None:
        # Drain records already handed to the writer thread first: they were promised to the log.
        self._executor.shutdown(wait=True)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Clean shutdown: vouch for the open segment as far as it goes, so the next open
            # checks no record at all (after a crash, only those appended since).
            self._save_checkpoint(with_open=True)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after each durable append (in the appending thread, under the lock:
        it must only hand the record over, e.g. with ``loop.call_soon_threadsafe``)."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def snapshot(self) -> LogSnapshot:
        with self._lock:
            segs = []
            for sid, path in list_segments(self._dir):
                try:
                    size = os.stat(path).st_size
                except FileNotFoundError:
                    continue
                segs.append(SegmentSnapshot(sid, path, size))
            head = read_head(self._dir, self._limits)
            return LogSnapshot(tuple(segs), head)

    def status(self) -> dict[str, Any]:
        with self._lock:
            segs = list_segments(self._dir)
            return {
                "log_id": self._log_id,
                "head_seq": self._seq,
                "segment": self._seg_id,
                "segments": len(segs),
                "max_segments": self._max_segments,
                "max_segment_bytes": self._max_segment_bytes,
                "quarantined": bool(self.open_failure) or (self._dir / QUARANTINE_DIR).exists(),
                "open": dict(self.open_stats),
                "checkpoint_error": self._checkpoint_error,
            }

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def key(self) -> bytes:
        return self._key

    @property
    def limits(self) -> AuditLimits:
        return self._limits

    @property
    def head_seq(self) -> int:
        with self._lock:
            return self._seq

    @property
    def log_id(self) -> str:
        with self._lock:
            return self._log_id

    # --- open / recovery ----------------------------------------------------------------------------

    def _open(self) -> None:
        segs = list_segments(self._dir)
        try:
            opened = open_directory(self._dir, self._key, self._limits)
        except AuditTampered as exc:
            self.open_failure = exc
            where = self._quarantine(segs)
            self._start_new_log()
            self._emit(
                EV_TAMPER,
                "failure",
                None,
                None,
                None,
                {"code": exc.code, "seq": exc.seq, "reason": exc.reason, "quarantine": where},
            )
            return
        report = opened.report
        self.opened_with = report
        self.open_stats = {
            "mode": opened.mode,
            "records_verified": opened.verifier.records_verified,
            "segments_from_checkpoint": opened.from_checkpoint,
        }
        if report.last_seq is None:
            if report.incomplete_tail is not None:
                # The genesis record itself was torn: nothing was ever logged here.
                os.unlink(self._dir / segment_name(report.incomplete_tail.segment))
                fsync_dir(self._dir)
            self._start_new_log()
            return
        assert report.log_id is not None and report.last_mac is not None
        self._log_id = report.log_id
        self._seq = report.last_seq
        self._last_mac = bytes.fromhex(report.last_mac)
        last = report.segments[-1]
        tracker = opened.verifier.last_tracker
        # The newest segment holding records is always read record by record (both paths), so its
        # running summary and hash continue from here.
        assert tracker is not None and tracker.id == last.id and tracker.size == last.size
        self._tracker = tracker
        self._closed_segments = {
            s.id: s
            for s in opened.verifier.summaries
            if s.id != last.id and s.id not in report.stale_segments
        }
        self._checkpoint_current = opened.mode == MODE_CHECKPOINT
        self._seg_id = last.id
        self._seg_size = last.size
        self._seg_chain = self._last_mac
        for sid in report.stale_segments:  # announced by an anchor before a crash, unlink now
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._dir / segment_name(sid))
        torn = report.incomplete_tail
        if torn is not None and torn.segment != last.id:
            # A segment file whose first record was torn: remove it, the rotation is redone.
            os.unlink(self._dir / segment_name(torn.segment))
        fsync_dir(self._dir)
        self._fd = os.open(self._dir / segment_name(last.id), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if torn is not None and torn.segment == last.id:
            os.ftruncate(self._fd, torn.offset)
            os.fsync(self._fd)
        if report.head_seq != report.last_seq:
            # The previous writer died between a record's fsync and the head's rename. Close that
            # window now, or the next crash could leave the head two records behind.
            self._write_head()
        if report.last_event == EV_ROTATE:
            # Crashed between closing a segment and opening the next: finish that rotation first,
            # a segment must start with its audit.segment record.
            self._finish_rotation(last.id + 1)
        if torn is not None:
            self._emit(
                EV_RECOVERED,
                "info",
                None,
                None,
                None,
                {"segment": torn.segment, "offset": torn.offset, "truncated_bytes": torn.length},
            )

    def _quarantine(self, segs: list[tuple[int, Path]]) -> str:
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(self._clock()))}-{secrets.token_hex(4)}"
        qdir = ensure_dir(self._dir / QUARANTINE_DIR / name)
        for _, path in segs:
            os.rename(path, qdir / path.name)
        for fname in (HEAD_FILE, CHECKPOINT_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self._dir / fname, qdir / fname)
        fsync_dir(qdir)
        fsync_dir(self._dir)
        return name

    def _start_new_log(self) -> None:
        self._log_id = secrets.token_hex(16)
        self._seq = 0
        self._closed_segments.clear()
        self._tracker = None
        self._checkpoint_current = False
        existing = list_segments(self._dir)
        self._seg_id = 0
        self._pending_segment = 1 if not existing else existing[-1][0] + 1
        self._emit(EV_GENESIS, "info", None, None, None, {"format": FORMAT_VERSION})

    # --- writing ------------------------------------------------------------------------------------

    def _bound_details(self, details: Mapping[str, Any] | None) -> dict[str, Any]:
        if details is None:
            return {}
        # Round-trip through JSON so non-JSON values (paths, enums) cannot make the event vanish.
        clean = json.loads(json.dumps(dict(details), default=str, allow_nan=False))
        size = len(canonical_json(clean))
        if size > self._limits.max_details_bytes:
            return {"_truncated": True, "_size": size}
        return dict(clean)

    @staticmethod
    def _field(value: str | None) -> str | None:
        if value is None:
            return None
        s = str(value)
        return s if len(s) <= _MAX_FIELD else s[:_MAX_FIELD] + "..."

    def _fields(
        self,
        seq: int,
        seg: int,
        event: str,
        outcome: str,
        actor: str | None,
        source: str | None,
        target: str | None,
        details: Mapping[str, Any],
    ) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "log": self._log_id,
            "seg": seg,
            "seq": seq,
            "time": format_time(self._clock()),
            "event": event,
            "outcome": outcome,
            "actor": self._field(actor),
            "source": self._field(source),
            "target": self._field(target),
            "details": dict(details),
        }

    def _build(
        self,
        event: str,
        outcome: str,
        actor: str | None,
        source: str | None,
        target: str | None,
        details: Mapping[str, Any],
    ) -> bytes:
        fields = self._fields(self._seq + 1, self._seg_id, event, outcome, actor, source, target, details)
        line, _ = seal_line(self._key, RECORD_DOMAIN, self._seg_chain, fields)
        if len(line) > self._limits.max_line_bytes:
            raise AuditError("audit record exceeds the line bound", code="audit.record_too_large")
        return line

    def _needs_rotation(self, length: int) -> bool:
        if self._pending_segment is not None:
            return False
        return self._seg_size + length + _ROTATION_SLACK > self._max_segment_bytes and self._seg_size > 0

    def _rotate(self) -> None:
        nxt = self._seg_id + 1
        self._emit(EV_ROTATE, "info", None, None, None, {"next_segment": nxt})
        self._finish_rotation(nxt)

    def _finish_rotation(self, nxt: int) -> None:
        self._pending_segment = nxt
        self._emit(
            EV_SEGMENT,
            "info",
            None,
            None,
            None,
            {
                "segment": nxt,
                "prev_segment": nxt - 1,
                "prev_seq": self._seq,
                "prev_mac": self._last_mac.hex(),
            },
        )
        present = [sid for sid, _ in list_segments(self._dir)]
        if len(present) > self._max_segments:
            self._drop_oldest(present)
        # After the unlink: a crash before this leaves the previous checkpoint, which lacks the
        # segment just closed, so the next open simply verifies in full.
        self._save_checkpoint()

    def _drop_oldest(self, present: list[int]) -> None:
        drop = present[: len(present) - self._max_segments]
        keep = self._closed_segments[present[len(present) - self._max_segments]]
        # Anchor first, unlink second: a crash in between leaves "stale" segments a verifier
        # accepts and the next open removes, never a gap nobody announced.
        self._emit(
            EV_ANCHOR,
            "info",
            None,
            None,
            None,
            {
                "dropped": drop,
                "first_segment": keep.id,
                "first_seq": keep.first_seq,
                "first_mac": keep.first_mac.hex(),
            },
        )
        for sid in drop:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._dir / segment_name(sid))
            self._closed_segments.pop(sid, None)
        fsync_dir(self._dir)

    def _save_checkpoint(self, *, with_open: bool = False) -> None:
        if self._checkpoint_current and not with_open:
            return
        summaries = [self._closed_segments[sid] for sid in sorted(self._closed_segments)]
        if with_open and self._tracker is not None and self._tracker.records:
            summaries.append(self._tracker.summary())
        try:
            write_checkpoint(self._dir, self._key, self._log_id, summaries, self._limits)
        except OSError as exc:
            # Only the next open's speed depends on it (it verifies in full without one), so a
            # full disk must not fail the append whose record is already durable.
            self._checkpoint_error = exc.strerror or str(exc)
            return
        self._checkpoint_error = None
        self._checkpoint_current = True

    def _open_pending_segment(self) -> None:
        assert self._pending_segment is not None
        sid = self._pending_segment
        path = self._dir / segment_name(sid)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fsync_dir(self._dir)
        if self._fd is not None:
            os.close(self._fd)
        if self._tracker is not None and self._tracker.records:
            self._closed_segments[self._tracker.id] = self._tracker.summary()
            self._checkpoint_current = False
        self._tracker = SegmentTracker(sid)
        self._fd = fd
        self._seg_id = sid
        self._seg_size = 0
        self._seg_chain = ZERO_MAC
        self._pending_segment = None

    def _emit(
        self,
        event: str,
        outcome: str,
        actor: str | None,
        source: str | None,
        target: str | None,
        details: Mapping[str, Any],
    ) -> AuditRecord:
        if self._pending_segment is not None:
            self._open_pending_segment()
        assert self._fd is not None
        seq = self._seq + 1
        fields = self._fields(seq, self._seg_id, event, outcome, actor, source, target, details)
        line, mac = seal_line(self._key, RECORD_DOMAIN, self._seg_chain, fields)
        data = line + b"\n"
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(28, "short write")
            os.fsync(self._fd)
        except OSError as exc:
            # Leave no partial line behind for the next record to be glued onto.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._seg_size)
            raise AuditError(f"audit write failed: {exc.strerror}", code="audit.write_failed") from exc
        rec = AuditRecord(seq, self._seg_id, event, outcome, fields["time"], fields, line, mac)
        assert self._tracker is not None and self._tracker.id == self._seg_id
        self._tracker.add(rec)
        self._tracker.add_bytes(data)
        self._seg_size += len(data)
        self._seq = seq
        self._seg_chain = mac
        self._last_mac = mac
        self._write_head()
        for listener in list(self._listeners):
            with contextlib.suppress(Exception):  # a listener must never break the log
                listener(rec)
        return rec

    def _write_head(self) -> None:
        head = {
            "v": FORMAT_VERSION,
            "log": self._log_id,
            "seq": self._seq,
            "seg": self._seg_id,
            "last_mac": self._last_mac.hex(),
        }
        line, _ = seal_line(self._key, HEAD_DOMAIN, b"", head)
        try:
            atomic_write(self._dir / HEAD_FILE, line + b"\n")
        except OSError as exc:
            raise AuditError(f"audit head write failed: {exc.strerror}", code="audit.write_failed") from exc
