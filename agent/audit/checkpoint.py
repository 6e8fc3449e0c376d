"""Checkpoint of the segments, so that opening the log does not cost reading every record.

Verifying every record at open takes seconds for a full log (docs/benchmarks-audit.md), far more
under emulation or on a small SoC. Segments are append-only and a closed one never changes, so the
writer, which produced their records, keeps a MACed statement about each in ``checkpoint.json``:

    {"log": <id>, "segments": [{id, size, sha256, records, first record, first/last/prev MAC,
      last seq and event, newest anchor, tamper records, recovered count, longest line}, ...],
     "v": 1, "mac": ...}

in the record line format with its own domain (``"camera-audit-checkpoint-v1\\0"``, no chain): MAC
first, then parse, every member checked. The summary is built by ``SegmentTracker`` from the records
as they are written, i.e. by the same code that builds it from verified records, and is bound to
the file by size and SHA-256 (hashed incrementally while writing: a segment edited while the agent
ran does not match). Rotation writes the closed segments' summaries; a clean shutdown adds the
open segment's, as far as it goes.

At open (``verify_at_open``): when every segment but the newest has a summary whose size and
SHA-256 match the file, ``ChainVerifier.feed_summary`` stands in for reading its records (the checks
between segments - ids, rotation, links, log id, seq - still run); the newest segment is verified
record by record, from the end of its summarised prefix if the file still starts with exactly
those bytes; and ``finish`` checks the head pointer and the anchor as before. Anything else (no
checkpoint, bad MAC, another log, a missing or different summary, a torn newest segment) and ANY
failure on this path fall back to full verification, so what open reports - the report or the
``AuditTampered`` code - is by construction what full verification reports.

Rollback: the checkpoint adds no trust in what is *present*; truncation is still caught by the head
pointer in ``finish``. An older checkpoint lacks the newer segments (-> full verification); an older
checkpoint with the older segments it describes and today's head is ``audit.truncated`` as today.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.audit.errors import AuditError, AuditTampered
from agent.audit.limits import AuditLimits
from agent.audit.record import (
    EV_GENESIS,
    EV_SEGMENT,
    FORMAT_VERSION,
    LineError,
    open_line,
    seal_line,
)
from agent.audit.verify import (
    _LOG_ID_RE,
    _MAC_HEX_RE,
    Anchor,
    ChainVerifier,
    SegmentSummary,
    SegmentTracker,
    VerifyReport,
    _check_schema,
    _int,
    list_segments,
    read_bounded,
    read_head,
)
from agent.state import atomic_write, fsync_dir

CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_DOMAIN = b"camera-audit-checkpoint-v1\x00"

_SUMMARY_KEYS = frozenset(
    {"id", "size", "sha256", "records", "first", "first_mac", "last_seq", "last_mac", "prev_mac",
     "last_event", "anchor", "tamper", "recovered", "longest"}
)
_ANCHOR_KEYS = frozenset({"first_segment", "first_seq", "first_mac"})

MODE_CHECKPOINT = "checkpoint"
MODE_FULL = "full"


class CheckpointUnusable(Exception):
    """The checkpoint cannot stand in for reading a segment (internal: the caller falls back to
    full verification, never reports this)."""


@dataclass(frozen=True)
class Checkpoint:
    log_id: str
    segments: Mapping[int, SegmentSummary]


# --- format (pure) ------------------------------------------------------------------------------


def seal_checkpoint(key: bytes, log_id: str, summaries: Sequence[SegmentSummary]) -> bytes:
    obj = {"v": FORMAT_VERSION, "log": log_id, "segments": [_summary_json(s) for s in summaries]}
    line, _ = seal_line(key, CHECKPOINT_DOMAIN, b"", obj)
    return line + b"\n"


def open_checkpoint(key: bytes, data: bytes, limits: AuditLimits) -> Checkpoint:
    """MAC first, then parse; raises CheckpointUnusable for anything but a well-formed checkpoint."""
    if len(data) > limits.max_checkpoint_bytes or not data.endswith(b"\n"):
        raise CheckpointUnusable("checkpoint too large or not one line")
    try:
        obj, _ = open_line(key, CHECKPOINT_DOMAIN, b"", data[:-1])
    except LineError:
        raise CheckpointUnusable("checkpoint does not verify") from None
    log_id = obj.get("log")
    segs = obj.get("segments")
    if (
        set(obj) != {"v", "log", "segments"}
        or obj["v"] != FORMAT_VERSION
        or not isinstance(log_id, str)
        or not _LOG_ID_RE.match(log_id)
        or not isinstance(segs, list)
        or len(segs) > limits.max_segments_read
    ):
        raise CheckpointUnusable("checkpoint lacks required members")
    out: dict[int, SegmentSummary] = {}
    for raw in segs:
        s = _parse_summary(raw, log_id)
        if out and s.id <= max(out):
            raise CheckpointUnusable("checkpoint segments out of order")
        out[s.id] = s
    return Checkpoint(log_id, out)


def _summary_json(s: SegmentSummary) -> dict[str, Any]:
    return {
        "id": s.id,
        "size": s.size,
        "sha256": s.sha256.hex(),
        "records": s.records,
        "first": dict(s.first),
        "first_mac": s.first_mac.hex(),
        "last_seq": s.last_seq,
        "last_mac": s.last_mac.hex(),
        "prev_mac": None if s.prev_mac is None else s.prev_mac.hex(),
        "last_event": s.last_event,
        "anchor": None
        if s.anchor is None
        else {
            "first_segment": s.anchor.first_segment,
            "first_seq": s.anchor.first_seq,
            "first_mac": s.anchor.first_mac.hex(),
        },
        "tamper": [dict(t) for t in s.tamper],
        "recovered": s.recovered,
        "longest": s.longest,
    }


def _mac(v: Any) -> bytes:
    if not isinstance(v, str) or not _MAC_HEX_RE.match(v):
        raise CheckpointUnusable("checkpoint holds a malformed digest")
    return bytes.fromhex(v)


def _count(v: Any) -> int:
    if not _int(v):
        raise CheckpointUnusable("checkpoint holds a malformed number")
    return int(v)


def _parse_summary(raw: Any, log_id: str) -> SegmentSummary:
    if not isinstance(raw, dict) or set(raw) != _SUMMARY_KEYS:
        raise CheckpointUnusable("checkpoint segment lacks required members")
    first = raw["first"]
    if not isinstance(first, dict):
        raise CheckpointUnusable("checkpoint segment lacks its first record")
    try:
        _check_schema(first, None)
    except AuditTampered:
        raise CheckpointUnusable("checkpoint holds a malformed first record") from None
    sid = _count(raw["id"])
    records = _count(raw["records"])
    last_seq = _count(raw["last_seq"])
    prev = raw["prev_mac"]
    anchor = raw["anchor"]
    tamper = raw["tamper"]
    if (
        first["log"] != log_id
        or first["seg"] != sid
        or first["event"] not in (EV_GENESIS, EV_SEGMENT)
        or records < 1
        or first["seq"] + records - 1 != last_seq
        or (prev is None) != (records == 1)
        or not isinstance(raw["last_event"], str)
        or not isinstance(tamper, list)
        or not all(isinstance(t, dict) for t in tamper)
        or not (anchor is None or (isinstance(anchor, dict) and set(anchor) == _ANCHOR_KEYS))
    ):
        raise CheckpointUnusable("checkpoint segment is inconsistent")
    return SegmentSummary(
        id=sid,
        size=_count(raw["size"]),
        sha256=_mac(raw["sha256"]),
        records=records,
        first=first,
        first_mac=_mac(raw["first_mac"]),
        last_seq=last_seq,
        last_mac=_mac(raw["last_mac"]),
        prev_mac=None if prev is None else _mac(prev),
        last_event=raw["last_event"],
        anchor=None
        if anchor is None
        else Anchor(_count(anchor["first_segment"]), _count(anchor["first_seq"]), _mac(anchor["first_mac"])),
        tamper=tuple(tamper),
        recovered=_count(raw["recovered"]),
        longest=_count(raw["longest"]),
    )


# --- verification (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenedLog:
    report: VerifyReport
    verifier: ChainVerifier  # summaries of every segment, the newest one's live tracker
    mode: str  # MODE_CHECKPOINT or MODE_FULL
    from_checkpoint: int  # segments taken from the checkpoint


def verify_with_checkpoint(
    checkpoint: bytes,
    segments: Sequence[tuple[int, bytes]],
    key: bytes,
    head: bytes | None,
    *,
    limits: AuditLimits,
) -> OpenedLog:
    """Verify a log whose closed segments (all but the newest) are vouched for by ``checkpoint``:
    each must have a summary of the same size and SHA-256, else CheckpointUnusable. The newest
    segment is read record by record from where the checkpoint's summary of it ends, if it has
    one whose bytes are still the file's prefix (written at clean shutdown; a segment is
    append-only), else from its start. Raises AuditTampered as full verification would for the
    same input."""
    cp = open_checkpoint(key, checkpoint, limits)
    if not segments:
        raise CheckpointUnusable("no segment to vouch for")
    verifier = ChainVerifier(key, limits)
    for sid, data in segments[:-1]:
        s = cp.segments.get(sid)
        if s is None or s.size != len(data) or not hmac.compare_digest(s.sha256, hashlib.sha256(data).digest()):
            raise CheckpointUnusable(f"segment {sid} is not the one the checkpoint describes")
        verifier.feed_summary(s)
    sid, data = segments[-1]
    prefix = _matching_prefix(cp.segments.get(sid), data)
    if prefix is None and len(segments) == 1:
        raise CheckpointUnusable("the checkpoint vouches for nothing here")
    records = verifier.feed(sid, data, last=True) if prefix is None else verifier.feed_resumed(prefix, data)
    for _ in records:
        pass
    tracker = verifier.last_tracker
    if tracker is None or tracker.id != sid:
        # A rotation interrupted before the newest segment's first record: rare, and the writer
        # needs the previous segment's running hash to finish it, so verify in full.
        raise CheckpointUnusable("the newest segment holds no complete record")
    return OpenedLog(verifier.finish(head), verifier, MODE_CHECKPOINT, len(segments) - 1 + (prefix is not None))


def _matching_prefix(summary: SegmentSummary | None, data: bytes) -> SegmentTracker | None:
    if summary is None or summary.size > len(data):
        return None
    tracker = SegmentTracker.resume(summary, memoryview(data)[: summary.size])
    return tracker if hmac.compare_digest(tracker.digest(), summary.sha256) else None


def verify_at_open(
    checkpoint: bytes | None,
    segments: Sequence[tuple[int, bytes]],
    key: bytes,
    head: bytes | None,
    *,
    limits: AuditLimits,
) -> OpenedLog:
    """The writer's verification at open: through the checkpoint when it vouches for every closed
    segment; otherwise, and after ANY failure on that path, in full. So the verdict (report or
    AuditTampered code) is always the full verification's; the checkpoint only saves time."""
    if checkpoint is not None:
        with contextlib.suppress(CheckpointUnusable, AuditTampered):
            return verify_with_checkpoint(checkpoint, segments, key, head, limits=limits)
    verifier = ChainVerifier(key, limits)
    for i, (sid, data) in enumerate(segments):
        for _ in verifier.feed(sid, data, last=i == len(segments) - 1):
            pass
    return OpenedLog(verifier.finish(head), verifier, MODE_FULL, 0)


# --- file adapter -------------------------------------------------------------------------------


def read_checkpoint(directory: Path, limits: AuditLimits) -> bytes | None:
    try:
        return read_bounded(directory / CHECKPOINT_FILE, limits.max_checkpoint_bytes)
    except AuditError:  # missing, unreadable or oversized: full verification still works
        return None


def open_directory(directory: Path, key: bytes, limits: AuditLimits) -> OpenedLog:
    """Read the log in ``directory`` (bounded, as ``verify_directory``) and verify it for the
    writer (``verify_at_open``). Hashing the closed segments runs at C speed; only the newest
    segment's records are checked one by one in Python."""
    segs = list_segments(directory)
    if len(segs) > limits.max_segments_read:
        raise AuditTampered("audit.too_many_segments", None, "more segments than any writer keeps")
    head = read_head(directory, limits)
    checkpoint = read_checkpoint(directory, limits)
    data = [(sid, read_bounded(p, limits.max_segment_read_bytes)) for sid, p in segs]
    return verify_at_open(checkpoint, data, key, head, limits=limits)


def write_checkpoint(
    directory: Path, key: bytes, log_id: str, summaries: Sequence[SegmentSummary], limits: AuditLimits
) -> None:
    """Replace the checkpoint atomically; with nothing to vouch for (or too much to fit the bound)
    remove it, so no stale one is left to be consulted."""
    data = seal_checkpoint(key, log_id, summaries) if summaries else b""
    path = directory / CHECKPOINT_FILE
    if data and len(data) <= limits.max_checkpoint_bytes:
        atomic_write(path, data)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
        fsync_dir(directory)
