"""Verification of the audit chain: a pure core over segment bytes, and a thin file adapter.

The core (``ChainVerifier`` / ``verify_segments``) takes the bytes of each segment in order, the key
and the head pointer, and either returns a ``VerifyReport`` or raises ``AuditTampered(code, seq,
reason)``. It never touches the filesystem, so every attack is a unit test on bytes.

What is checked, in order of reading:
- every line's MAC before its body is parsed (``record.open_line``);
- inside a segment, each MAC chains over the previous one; the first record of a segment is
  ``audit.genesis`` (segment 1 of a fresh log) or ``audit.segment`` naming the previous segment's
  id, last seq and last MAC;
- seq increases by exactly one across the whole log, every record names the log id and the
  segment it belongs to;
- segments are consecutive; each one but the last ends with ``audit.rotate`` naming the next;
- the oldest present segment is the genesis segment, or the one the newest ``audit.anchor``
  names (older leftovers are "stale": announced as dropped, not yet unlinked);
- the head pointer (``head.json``, its own MAC) names a record that exists with that MAC; the log
  may be ahead of it by at most one record (a crash between the record's fsync and the head's
  rename), never behind it (records cut from the end).
A final line without its newline in the LAST segment is an incomplete tail (a torn write), reported
separately from tampering; anywhere else it is tampering.

``feed_summary`` / ``feed_resumed`` take a segment (or the newest one's prefix) from a
``SegmentSummary`` instead of its bytes; the checks between segments run all the same. Only the
writer's open uses them (checkpoint.py); ``verify_directory``, the CLI and the API read every record.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.audit.errors import AuditError, AuditTampered
from agent.audit.limits import AuditLimits
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
    LineError,
    MacMismatch,
    open_line,
)

HEAD_FILE = "head.json"
QUARANTINE_DIR = "quarantine"
SEGMENT_RE = re.compile(r"\Aseg-(\d{8})\.jsonl\Z")
_LOG_ID_RE = re.compile(r"\A[0-9a-f]{32}\Z")
_MAC_HEX_RE = re.compile(r"\A[0-9a-f]{64}\Z")
_MAX_SEQ = 2**53


def segment_name(segment_id: int) -> str:
    return f"seg-{segment_id:08d}.jsonl"


@dataclass(frozen=True)
class SegmentInfo:
    id: int
    records: int
    first_seq: int
    first_mac: str
    last_seq: int
    last_mac: str
    size: int  # bytes of complete lines


@dataclass(frozen=True)
class Anchor:
    first_segment: int
    first_seq: int
    first_mac: bytes


@dataclass(frozen=True)
class SegmentSummary:
    """What one segment's complete records establish, as far as the chain around it is concerned:
    enough for ``ChainVerifier.feed_summary`` to continue exactly where ``feed`` over the same bytes
    would. ``size`` and ``sha256`` bind it to those bytes (see checkpoint.py)."""

    id: int
    size: int
    sha256: bytes
    records: int
    first: Mapping[str, Any]  # the first record's members (audit.genesis / audit.segment), no mac
    first_mac: bytes
    last_seq: int
    last_mac: bytes
    prev_mac: bytes | None  # the record before the last; None when the segment holds one record
    last_event: str
    anchor: Anchor | None  # the newest audit.anchor in this segment
    tamper: tuple[Mapping[str, Any], ...]
    recovered: int
    longest: int  # longest line: checked against the reader's max_line_bytes, which may be lower

    @property
    def first_seq(self) -> int:
        return int(self.first["seq"])

    @property
    def info(self) -> SegmentInfo:
        return SegmentInfo(
            self.id,
            self.records,
            self.first_seq,
            self.first_mac.hex(),
            self.last_seq,
            self.last_mac.hex(),
            self.size,
        )


class SegmentTracker:
    """Builds the ``SegmentSummary`` of one segment from its records in order: the verifier feeds
    it the records it verified, the writer the records it wrote (one code path for both, so a
    checkpoint written by the writer says what verification of the same bytes would say)."""

    def __init__(self, segment_id: int) -> None:
        self.id = segment_id
        self.records = 0
        self.size = 0
        self._hash = hashlib.sha256()
        self._first: Mapping[str, Any] = {}
        self._first_mac = ZERO_MAC
        self._last_seq = 0
        self._last_mac = ZERO_MAC
        self._prev_mac: bytes | None = None
        self._last_event = ""
        self._anchor: Anchor | None = None
        self._tamper: list[Mapping[str, Any]] = []
        self._recovered = 0
        self._longest = 0

    def add(self, rec: AuditRecord) -> None:
        f = rec.fields
        if rec.event == EV_ANCHOR:
            self._anchor = Anchor(
                _detail_int(f, "first_segment", rec.seq),
                _detail_int(f, "first_seq", rec.seq),
                _detail_mac(f, "first_mac", rec.seq),
            )
        elif rec.event == EV_TAMPER:
            self._tamper.append({"seq": rec.seq, "time": rec.time, **f["details"]})
        elif rec.event == EV_RECOVERED:
            self._recovered += 1
        if self.records == 0:
            self._first = f
            self._first_mac = rec.mac
        else:
            self._prev_mac = self._last_mac
        self._last_seq = rec.seq
        self._last_mac = rec.mac
        self._last_event = rec.event
        self._longest = max(self._longest, len(rec.line))
        self.records += 1

    @classmethod
    def resume(cls, summary: SegmentSummary, prefix: bytes | memoryview) -> SegmentTracker:
        """Continue a summary whose bytes are ``prefix`` (compare ``digest()`` with the summary's)."""
        t = cls(summary.id)
        t.add_bytes(prefix)
        t.records = summary.records
        t._first = summary.first
        t._first_mac = summary.first_mac
        t._last_seq = summary.last_seq
        t._last_mac = summary.last_mac
        t._prev_mac = summary.prev_mac
        t._last_event = summary.last_event
        t._anchor = summary.anchor
        t._tamper = list(summary.tamper)
        t._recovered = summary.recovered
        t._longest = summary.longest
        return t

    @property
    def last_mac(self) -> bytes:
        """The chain value for the next record: the last MAC, zeros before the first record."""
        return self._last_mac

    def digest(self) -> bytes:
        return self._hash.digest()

    def add_bytes(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)

    def summary(self) -> SegmentSummary:
        if self.records == 0:
            raise AuditError("an empty segment has no summary", code="audit.internal")
        return SegmentSummary(
            id=self.id,
            size=self.size,
            sha256=self._hash.digest(),
            records=self.records,
            first=self._first,
            first_mac=self._first_mac,
            last_seq=self._last_seq,
            last_mac=self._last_mac,
            prev_mac=self._prev_mac,
            last_event=self._last_event,
            anchor=self._anchor,
            tamper=tuple(self._tamper),
            recovered=self._recovered,
            longest=self._longest,
        )


@dataclass(frozen=True)
class IncompleteTail:
    segment: int
    offset: int  # where the torn bytes start (the size to truncate the segment to)
    length: int


@dataclass(frozen=True)
class VerifyReport:
    log_id: str | None
    records: int
    first_seq: int | None
    last_seq: int | None
    last_mac: str | None
    segments: tuple[SegmentInfo, ...]
    stale_segments: tuple[int, ...]  # announced as dropped by an anchor, still on disk
    anchored: bool  # True when the log starts at an anchor (older segments rotated away)
    head_seq: int | None
    incomplete_tail: IncompleteTail | None
    tamper_events: tuple[Mapping[str, Any], ...]  # audit.tamper_detected records in the chain
    recovered_events: int
    last_event: str | None

    @property
    def clean(self) -> bool:
        """The chain verifies, nothing is torn, and the device never recorded tampering."""
        return self.incomplete_tail is None and not self.tamper_events

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.clean,
            "log_id": self.log_id,
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head_seq": self.head_seq,
            "anchored": self.anchored,
            "segments": [
                {
                    "id": s.id,
                    "records": s.records,
                    "first_seq": s.first_seq,
                    "last_seq": s.last_seq,
                    "bytes": s.size,
                }
                for s in self.segments
            ],
            "stale_segments": list(self.stale_segments),
            "incomplete_tail": None
            if self.incomplete_tail is None
            else {
                "segment": self.incomplete_tail.segment,
                "offset": self.incomplete_tail.offset,
                "bytes": self.incomplete_tail.length,
            },
            "tamper_events": [dict(t) for t in self.tamper_events],
            "recovered_events": self.recovered_events,
        }


EMPTY_REPORT = VerifyReport(None, 0, None, None, None, (), (), False, None, None, (), 0, None)


def _str_or_none(obj: Mapping[str, Any], name: str) -> bool:
    v = obj.get(name)
    return v is None or isinstance(v, str)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _MAX_SEQ


def _check_schema(obj: Mapping[str, Any], seq_hint: int | None) -> None:
    ok = (
        obj.get("v") == FORMAT_VERSION
        and isinstance(obj.get("log"), str)
        and bool(_LOG_ID_RE.match(obj["log"]))
        and _int(obj.get("seg"))
        and _int(obj.get("seq"))
        and isinstance(obj.get("time"), str)
        and isinstance(obj.get("event"), str)
        and isinstance(obj.get("outcome"), str)
        and _str_or_none(obj, "actor")
        and _str_or_none(obj, "source")
        and _str_or_none(obj, "target")
        and isinstance(obj.get("details"), dict)
    )
    if not ok:
        raise AuditTampered("audit.malformed", seq_hint, "authenticated record lacks required members")


def _detail_int(rec: Mapping[str, Any], name: str, seq: int) -> int:
    v = rec["details"].get(name)
    if not _int(v):
        raise AuditTampered("audit.malformed", seq, f"{rec['event']} lacks an integer {name}")
    return int(v)


def _detail_mac(rec: Mapping[str, Any], name: str, seq: int) -> bytes:
    v = rec["details"].get(name)
    if not isinstance(v, str) or not _MAC_HEX_RE.match(v):
        raise AuditTampered("audit.malformed", seq, f"{rec['event']} lacks a MAC in {name}")
    return bytes.fromhex(v)


@dataclass
class ChainVerifier:
    """Incremental verifier: ``feed`` each segment in order (yielding verified records), then
    ``finish`` with the head pointer. Any failure raises ``AuditTampered``."""

    key: bytes
    limits: AuditLimits = field(default_factory=AuditLimits)
    records_verified: int = 0  # lines whose MAC was checked (feed_summary checks none)
    _summaries: list[SegmentSummary] = field(default_factory=list)
    _last_tracker: SegmentTracker | None = None  # of the newest segment fed line by line
    _log_id: str | None = None
    _last_seq: int | None = None
    _last_mac: bytes | None = None
    _prev_mac: bytes | None = None  # MAC of the record before the last (head may lag by one)
    _last_event: str | None = None
    _rotate_to: int | None = None  # set when the last record seen is audit.rotate
    _genesis_start: bool = False
    _tail: IncompleteTail | None = None
    _finished_input: bool = False

    @property
    def summaries(self) -> tuple[SegmentSummary, ...]:
        return tuple(self._summaries)

    @property
    def last_tracker(self) -> SegmentTracker | None:
        """The tracker of the newest segment fed line by line (the writer continues it)."""
        return self._last_tracker

    def feed(self, segment_id: int, data: bytes, *, last: bool) -> Iterator[AuditRecord]:
        self._begin_segment(segment_id, len(data))
        yield from self._feed_lines(segment_id, data, last)

    def feed_summary(self, summary: SegmentSummary) -> None:
        """Continue the chain over a complete, non-final segment known only by its summary (from a
        MACed checkpoint whose size and SHA-256 matched the file). The checks that involve the
        segments around it run exactly as in ``feed``; the ones inside it ran when the summary
        was made."""
        self._begin_segment(summary.id, summary.size)
        self._check_lines(summary)
        self._apply_summary(summary)
        self._summaries.append(summary)

    def feed_resumed(self, prefix: SegmentTracker, data: bytes) -> Iterator[AuditRecord]:
        """Verify the newest segment from where ``prefix`` (resumed from a checkpoint summary whose
        SHA-256 the caller matched against ``data[:prefix.size]``) ends: records before that are
        taken from the summary, the ones after it are checked one by one as in ``feed``."""
        self._begin_segment(prefix.id, len(data))
        summary = prefix.summary()
        self._check_lines(summary)
        self._apply_summary(summary)
        yield from self._feed_lines(prefix.id, data, True, prefix)

    def _check_lines(self, summary: SegmentSummary) -> None:
        # The one check inside a segment that depends on the reader: a lower line bound than the
        # writer had (config change). Same verdict as reading the lines would give.
        if summary.longest > self.limits.max_line_bytes:
            raise AuditTampered("audit.malformed", None, f"segment {summary.id} holds a line longer than the bound")

    def _apply_summary(self, summary: SegmentSummary) -> None:
        first = AuditRecord.from_fields(summary.first, b"", summary.first_mac)
        self._accept(first, summary.id, first=True)
        if summary.records > 1:
            self._prev_mac = summary.prev_mac
            self._last_seq = summary.last_seq
            self._last_mac = summary.last_mac
            self._last_event = summary.last_event
            self._rotate_to = summary.id + 1 if summary.last_event == EV_ROTATE else None

    def _begin_segment(self, segment_id: int, size: int) -> None:
        if self._finished_input:
            raise AuditTampered("audit.torn_segment", None, "segment follows a torn segment")
        if len(self._summaries) >= self.limits.max_segments_read:
            raise AuditTampered("audit.too_many_segments", None, "more segments than any writer keeps")
        if size > self.limits.max_segment_read_bytes:
            raise AuditTampered("audit.segment_too_large", None, f"segment {segment_id} exceeds the bound")
        if self._summaries:
            prev = self._summaries[-1].id
            if segment_id != prev + 1:
                raise AuditTampered(
                    "audit.segment_missing",
                    self._next_seq(),
                    f"segment {segment_id} follows segment {prev}: segments in between are missing",
                )
            if self._rotate_to != segment_id:
                raise AuditTampered(
                    "audit.segment_truncated",
                    self._next_seq(),
                    f"segment {prev} does not end with a rotation to segment {segment_id}",
                )

    def _next_seq(self) -> int | None:
        return None if self._last_seq is None else self._last_seq + 1

    def _feed_lines(
        self, segment_id: int, data: bytes, last: bool, prefix: SegmentTracker | None = None
    ) -> Iterator[AuditRecord]:
        tracker = prefix or SegmentTracker(segment_id)
        start = pos = tracker.size
        chain = tracker.last_mac
        max_line = self.limits.max_line_bytes
        while pos < len(data):
            nl = data.find(b"\n", pos, pos + max_line + 1)
            if nl < 0:
                if len(data) - pos <= max_line and last:
                    self._tail = IncompleteTail(segment_id, pos, len(data) - pos)
                    self._finished_input = True
                    break
                if len(data) - pos > max_line:
                    raise AuditTampered("audit.malformed", self._next_seq(), "line longer than the bound")
                raise AuditTampered(
                    "audit.torn_segment",
                    self._next_seq(),
                    f"segment {segment_id} ends inside a line but is not the last segment",
                )
            line = data[pos:nl]
            pos = nl + 1
            self.records_verified += 1
            try:
                obj, mac = open_line(self.key, RECORD_DOMAIN, chain, line)
            except MacMismatch:
                # Edited, deleted, reordered, spliced from elsewhere or a wrong key: the MAC alone
                # cannot tell which; the audit log gets the position, the attacker learns nothing.
                raise AuditTampered(
                    "audit.mac_mismatch",
                    self._next_seq(),
                    f"record {tracker.records + 1} of segment {segment_id} does not verify",
                ) from None
            except LineError as exc:
                raise AuditTampered(
                    "audit.malformed", self._next_seq(), f"segment {segment_id}: {exc}"
                ) from None
            _check_schema(obj, self._next_seq())
            rec = AuditRecord.from_fields(obj, line, mac)
            self._accept(rec, segment_id, first=tracker.records == 0)
            tracker.add(rec)
            chain = mac
            yield rec
        if tracker.records == 0:
            if last and (self._tail is not None or not data):
                # Creating a segment was interrupted before its first record completed (the
                # file may even be empty: a crash between create and the first write).
                self._tail = self._tail or IncompleteTail(segment_id, 0, 0)
                self._finished_input = True
                return
            raise AuditTampered(
                "audit.segment_empty", self._next_seq(), f"segment {segment_id} holds no record"
            )
        size = pos if self._tail is None or self._tail.segment != segment_id else self._tail.offset
        tracker.add_bytes(memoryview(data)[start:size])
        self._summaries.append(tracker.summary())
        self._last_tracker = tracker

    def _accept(self, rec: AuditRecord, segment_id: int, *, first: bool) -> None:
        f = rec.fields
        seq = rec.seq
        if rec.segment != segment_id:
            raise AuditTampered(
                "audit.segment_renamed", seq, f"record names segment {rec.segment}, file is {segment_id}"
            )
        if self._rotate_to is not None and not first:
            raise AuditTampered("audit.after_rotate", seq, "record after a rotation inside the same segment")
        if first:
            if rec.event == EV_GENESIS:
                if self._summaries or seq != 1:
                    raise AuditTampered("audit.spliced", seq, "a genesis record inside the log")
                self._genesis_start = True
                self._log_id = f["log"]
            elif rec.event == EV_SEGMENT:
                if _detail_int(f, "segment", seq) != segment_id:
                    raise AuditTampered("audit.segment_renamed", seq, "segment start names another segment")
                prev_mac = _detail_mac(f, "prev_mac", seq)
                prev_seq = _detail_int(f, "prev_seq", seq)
                if self._summaries:
                    assert self._last_mac is not None
                    if (
                        _detail_int(f, "prev_segment", seq) != self._summaries[-1].id
                        or prev_seq != self._last_seq
                        or not hmac.compare_digest(prev_mac, self._last_mac)
                    ):
                        raise AuditTampered(
                            "audit.spliced",
                            seq,
                            f"segment {segment_id} does not continue segment {self._summaries[-1].id}",
                        )
                else:
                    # Oldest present segment: its predecessor is gone; the anchor check at finish
                    # decides whether that was a recorded rotation.
                    self._last_seq = prev_seq
                    self._last_mac = prev_mac
                    self._log_id = f["log"]
            else:
                raise AuditTampered(
                    "audit.segment_start", seq, f"segment {segment_id} starts with {rec.event}"
                )
        if f["log"] != self._log_id:
            raise AuditTampered("audit.log_mismatch", seq, "record belongs to another log")
        if self._last_seq is not None and seq != self._last_seq + 1:
            raise AuditTampered("audit.seq", seq, f"seq {seq} follows {self._last_seq}")
        self._rotate_to = None
        if rec.event == EV_ROTATE:
            nxt = _detail_int(f, "next_segment", seq)
            if nxt != segment_id + 1:
                raise AuditTampered("audit.malformed", seq, "rotation to a non-consecutive segment")
            self._rotate_to = nxt
        self._prev_mac = self._last_mac
        self._last_seq = seq
        self._last_mac = rec.mac
        self._last_event = rec.event

    def finish(self, head: bytes | None) -> VerifyReport:
        if not self._summaries:
            if head is not None:
                raise AuditTampered("audit.log_missing", None, "a head pointer exists but no segment does")
            return VerifyReport(
                None,
                0,
                None,
                None,
                None,
                (),
                (),
                False,
                None,
                self._tail,
                (),
                0,
                None,
            )
        # Head first: cutting the newest segment also removes the newest anchor, and "records
        # removed from the end" is the more precise diagnosis of that.
        head_seq = self._check_head(head)
        anchor = next((s.anchor for s in reversed(self._summaries) if s.anchor is not None), None)
        stale = self._check_start(anchor)
        retained = [s.info for s in self._summaries if s.id not in stale]
        assert self._last_seq is not None and self._last_mac is not None
        return VerifyReport(
            log_id=self._log_id,
            records=sum(s.records for s in retained),
            first_seq=retained[0].first_seq,
            last_seq=self._last_seq,
            last_mac=self._last_mac.hex(),
            segments=tuple(retained),
            stale_segments=tuple(stale),
            anchored=anchor is not None,
            head_seq=head_seq,
            incomplete_tail=self._tail,
            tamper_events=tuple(t for s in self._summaries for t in s.tamper),
            recovered_events=sum(s.recovered for s in self._summaries),
            last_event=self._last_event,
        )

    def _check_start(self, anchor: Anchor | None) -> list[int]:
        first = self._summaries[0]
        if anchor is None:
            if not self._genesis_start:
                raise AuditTampered(
                    "audit.unanchored_start",
                    first.first_seq,
                    f"log starts at segment {first.id} but no anchor records dropping its predecessors",
                )
            return []
        k = anchor.first_segment
        if k < first.id:
            raise AuditTampered(
                "audit.segment_deleted",
                None,
                f"anchor retains segments from {k} but the oldest present is {first.id}",
            )
        by_id = {s.id: s for s in self._summaries}
        kept = by_id.get(k)
        if kept is None:
            raise AuditTampered(
                "audit.anchor_mismatch", None, f"anchor names segment {k}, which is not present"
            )
        if kept.first_seq != anchor.first_seq or not hmac.compare_digest(kept.first_mac, anchor.first_mac):
            raise AuditTampered(
                "audit.anchor_mismatch", kept.first_seq, f"segment {k} is not the anchored one"
            )
        return [s.id for s in self._summaries if s.id < k]

    def _check_head(self, head: bytes | None) -> int:
        if head is None:
            if self._genesis_start and self._last_seq == 1:
                # Crash after the very first record's fsync, before the first head existed: the
                # same one-record window as a lagging head, not a deletion.
                return 0
            raise AuditTampered("audit.head_missing", None, "the head pointer is missing")
        if len(head) > self.limits.max_head_bytes:
            raise AuditTampered("audit.head_invalid", None, "head pointer too large")
        try:
            obj, _ = open_line(self.key, HEAD_DOMAIN, b"", head.rstrip(b"\n"))
        except LineError:
            raise AuditTampered("audit.head_invalid", None, "head pointer does not verify") from None
        seq = obj.get("seq")
        mac = obj.get("last_mac")
        if (
            obj.get("log") != self._log_id
            or not _int(seq)
            or not isinstance(mac, str)
            or not _MAC_HEX_RE.match(mac)
        ):
            raise AuditTampered("audit.head_invalid", None, "head pointer names another log")
        assert self._last_seq is not None and self._last_mac is not None
        assert isinstance(seq, int)
        if seq > self._last_seq:
            raise AuditTampered(
                "audit.truncated",
                self._last_seq + 1,
                f"head pointer says seq {seq} but the log ends at {self._last_seq}: records were removed",
            )
        if seq == self._last_seq:
            expected = self._last_mac
        elif seq == self._last_seq - 1 and self._prev_mac is not None:
            expected = self._prev_mac
        else:
            raise AuditTampered(
                "audit.head_stale", seq, f"head pointer at {seq} lags the log end {self._last_seq}"
            )
        if not hmac.compare_digest(bytes.fromhex(mac), expected):
            raise AuditTampered(
                "audit.head_mismatch", seq, "head pointer names a record that is not in the log"
            )
        return int(seq)


def verify_segments(
    segments: Sequence[tuple[int, bytes]],
    key: bytes,
    head: bytes | None,
    *,
    limits: AuditLimits | None = None,
) -> VerifyReport:
    """Pure entry point: verify ``segments`` (id, bytes) in id order against ``head``."""
    verifier = ChainVerifier(key, limits or AuditLimits())
    for i, (sid, data) in enumerate(segments):
        for _ in verifier.feed(sid, data, last=i == len(segments) - 1):
            pass
    return verifier.finish(head)


# --- file adapter -------------------------------------------------------------------------------


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    out = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        m = SEGMENT_RE.match(name)
        if m:
            out.append((int(m.group(1)), directory / name))
    out.sort()
    return out


def read_bounded(path: Path, max_bytes: int, size: int | None = None) -> bytes:
    """Read at most ``size`` bytes (a snapshot taken under the writer's lock) or the whole file,
    refusing anything larger than ``max_bytes``."""
    limit = max_bytes if size is None else min(size, max_bytes)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1 if size is None else limit)
    except OSError as exc:
        raise AuditError(f"cannot read {path.name}: {exc.strerror}", code="audit.unreadable") from exc
    if size is None and len(data) > max_bytes:
        raise AuditTampered("audit.segment_too_large", None, f"{path.name} exceeds {max_bytes} bytes")
    return data


def read_head(directory: Path, limits: AuditLimits) -> bytes | None:
    try:
        return read_bounded(directory / HEAD_FILE, limits.max_head_bytes)
    except AuditTampered:
        raise AuditTampered("audit.head_invalid", None, "head pointer too large") from None
    except AuditError:
        if not (directory / HEAD_FILE).exists():
            return None
        raise


def quarantined(directory: Path) -> list[str]:
    """Names of quarantined (tampered, preserved) logs: evidence that verification once failed."""
    try:
        return sorted(os.listdir(directory / QUARANTINE_DIR))
    except FileNotFoundError:
        return []


def verify_directory(directory: Path, key: bytes, *, limits: AuditLimits | None = None) -> VerifyReport:
    lim = limits or AuditLimits()
    segs = list_segments(directory)
    if len(segs) > lim.max_segments_read:
        raise AuditTampered("audit.too_many_segments", None, "more segments than any writer keeps")
    head = read_head(directory, lim)
    data = [(sid, read_bounded(p, lim.max_segment_read_bytes)) for sid, p in segs]
    return verify_segments(data, key, head, limits=lim)


def iter_directory(
    directory: Path, key: bytes, *, limits: AuditLimits | None = None
) -> Iterator[AuditRecord]:
    """Yield verified records of the whole directory in order; raise at the first bad one. The
    head check runs after the last record (records already yielded were themselves authentic)."""
    lim = limits or AuditLimits()
    segs = list_segments(directory)
    verifier = ChainVerifier(key, lim)
    for i, (sid, path) in enumerate(segs):
        yield from verifier.feed(sid, read_bounded(path, lim.max_segment_read_bytes), last=i == len(segs) - 1)
    verifier.finish(read_head(directory, lim))
