"""Build real audit logs (the production writer) in tmp dirs for the verifier tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from agent.audit.checkpoint import CHECKPOINT_FILE
from agent.audit.limits import AuditLimits
from agent.audit.log import AuditLog
from agent.audit.verify import HEAD_FILE, list_segments

# Small lines and segments so a few hundred records rotate several times in milliseconds.
SMALL = AuditLimits(max_line_bytes=1024, max_details_bytes=512)
SEGMENT_BYTES = 4096
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


class FakeClock:
    """A deterministic wall clock (1 s per call) so times in records are reproducible."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self._it = itertools.count()
        self._start = start

    def __call__(self) -> float:
        return self._start + next(self._it) * 0.25


@dataclass
class Built:
    directory: Path
    segments: list[tuple[int, bytes]]
    head: bytes
    dropped: dict[int, bytes] = field(default_factory=dict)  # segment bytes seen before rotation dropped them
    heads: list[bytes] = field(default_factory=list)  # head.json after each user record
    # Every file of the directory each time checkpoint.json changed (i.e. after each rotation).
    states: list[dict[str, bytes]] = field(default_factory=list)


def read_dir(directory: Path) -> tuple[list[tuple[int, bytes]], bytes | None]:
    segs = [(sid, p.read_bytes()) for sid, p in list_segments(directory)]
    head = directory / HEAD_FILE
    return segs, head.read_bytes() if head.exists() else None


def build_log(
    directory: Path,
    records: int,
    *,
    key: bytes = KEY,
    max_segments: int = 3,
    segment_bytes: int = SEGMENT_BYTES,
    min_last: int = 0,
) -> Built:
    """Append ``records`` records, then more until the newest segment holds ``min_last`` lines."""
    log = AuditLog(directory, key, clock=FakeClock(), max_segment_bytes=segment_bytes,
                   max_segments=max_segments, limits=SMALL)
    dropped: dict[int, bytes] = {}
    heads: list[bytes] = []
    states: list[dict[str, bytes]] = []
    try:
        i = 0
        while i < records or _last_lines(directory) < min_last:
            # Keep every segment seen, so tests can splice back one the writer dropped.
            for sid, path in list_segments(directory):
                dropped[sid] = path.read_bytes()
            log.append("auth.login", outcome="success" if i % 3 else "failure", actor=f"user{i % 4}",
                       source="192.0.2.7", target=None, details={"i": i})
            heads.append((directory / HEAD_FILE).read_bytes())
            checkpoint = directory / CHECKPOINT_FILE
            if checkpoint.exists() and (not states or states[-1].get(CHECKPOINT_FILE) != checkpoint.read_bytes()):
                states.append({p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()})
            i += 1
    finally:
        log.close()
    segs, head = read_dir(directory)
    assert head is not None
    present = {sid for sid, _ in segs}
    return Built(directory, segs, head, {k: v for k, v in dropped.items() if k not in present}, heads, states)


def _last_lines(directory: Path) -> int:
    segs = list_segments(directory)
    return segs[-1][1].read_bytes().count(b"\n") if segs else 0
