"""The pure verifier against an attack table (data), on logs written by the real writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.audit.errors import AuditTampered
from agent.audit.verify import VerifyReport, verify_segments
from tests.audit.logfactory import KEY, OTHER_KEY, SMALL, Built, build_log

Segs = list[tuple[int, bytes]]
Attack = Callable[[Built, Path], tuple[Segs, bytes | None]]


def lines(data: bytes) -> list[bytes]:
    out = data.split(b"\n")
    assert out[-1] == b""
    return out[:-1]


def join(ls: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in ls)


def edit_segment(b: Built, index: int, fn: Callable[[list[bytes]], list[bytes]]) -> Segs:
    segs = list(b.segments)
    sid, data = segs[index]
    segs[index] = (sid, join(fn(lines(data))))
    return segs


def _edit_outcome(ls: list[bytes]) -> list[bytes]:
    i = next(n for n, line in enumerate(ls) if b'"outcome":"failure"' in line)
    ls[i] = ls[i].replace(b'"outcome":"failure"', b'"outcome":"success"')
    return ls


def _edit_mac(ls: list[bytes]) -> list[bytes]:
    line = ls[3]
    flipped = b"0" if line[-3:-2] != b"0" else b"1"
    ls[3] = line[:-3] + flipped + line[-2:]
    return ls


def _swap(ls: list[bytes]) -> list[bytes]:
    ls[4], ls[5] = ls[5], ls[4]
    return ls


def _other_log_segment(b: Built, tmp: Path, key: bytes) -> Segs:
    other = build_log(tmp / "other", len(b.heads), key=key)
    segs = list(b.segments)
    by_id = dict(other.segments)
    sid = segs[1][0]
    assert sid in by_id, "the other log must have rotated the same way"
    segs[1] = (sid, by_id[sid])
    return segs


def _splice_dropped(b: Built) -> Segs:
    # A segment this log itself wrote earlier and rotated away, put back under a retained id.
    _old_id, old = next(iter(sorted(b.dropped.items())))
    segs = list(b.segments)
    segs[1] = (segs[1][0], old)
    return segs


def _head_of_other_log(b: Built, tmp: Path) -> bytes:
    return build_log(tmp / "other-head", len(b.heads)).head


ATTACKS: list[tuple[str, Attack, str]] = [
    ("edit outcome of a record", lambda b, t: (edit_segment(b, 1, _edit_outcome), b.head), "audit.mac_mismatch"),
    ("flip a MAC digit", lambda b, t: (edit_segment(b, 1, _edit_mac), b.head), "audit.mac_mismatch"),
    ("delete a record mid-segment", lambda b, t: (edit_segment(b, 1, lambda ls: ls[:3] + ls[4:]), b.head),
     "audit.mac_mismatch"),
    ("delete a segment's first record", lambda b, t: (edit_segment(b, 1, lambda ls: ls[1:]), b.head),
     "audit.mac_mismatch"),
    ("reorder two records", lambda b, t: (edit_segment(b, 1, _swap), b.head), "audit.mac_mismatch"),
    ("duplicate a record", lambda b, t: (edit_segment(b, 1, lambda ls: [*ls[:4], ls[3], *ls[4:]]), b.head),
     "audit.mac_mismatch"),
    ("blank line inserted", lambda b, t: (edit_segment(b, 1, lambda ls: [*ls[:2], b"", *ls[2:]]), b.head),
     "audit.malformed"),
    ("garbage line appended", lambda b, t: (edit_segment(b, -1, lambda ls: [*ls, b'{"x":1}']), b.head),
     "audit.malformed"),
    ("truncate: last record removed", lambda b, t: (edit_segment(b, -1, lambda ls: ls[:-1]), b.head),
     "audit.truncated"),
    ("truncate: last three records removed", lambda b, t: (edit_segment(b, -1, lambda ls: ls[:-3]), b.head),
     "audit.truncated"),
    ("truncate: newest segment deleted", lambda b, t: (b.segments[:-1], b.head), "audit.truncated"),
    ("head pointer deleted", lambda b, t: (b.segments, None), "audit.head_missing"),
    ("head pointer edited", lambda b, t: (b.segments, b.head.replace(b'"seq":', b'"seq":1')), "audit.head_invalid"),
    ("head pointer rolled back", lambda b, t: (b.segments, b.heads[-10]), "audit.head_stale"),
    ("head pointer from another log", lambda b, t: (b.segments, _head_of_other_log(b, t)), "audit.head_invalid"),
    ("whole log deleted, head kept", lambda b, t: ([], b.head), "audit.log_missing"),
    ("middle segment deleted", lambda b, t: ([b.segments[0], b.segments[2]], b.head), "audit.segment_missing"),
    ("oldest retained segment deleted", lambda b, t: (b.segments[1:], b.head), "audit.segment_deleted"),
    ("segment's rotate record cut", lambda b, t: (edit_segment(b, 0, lambda ls: ls[:-1]), b.head),
     "audit.segment_truncated"),
    ("splice: segment from an earlier rotation", lambda b, t: (_splice_dropped(b), b.head),
     "audit.segment_renamed"),
    ("splice: segment of another log, same key", lambda b, t: (_other_log_segment(b, t, KEY), b.head),
     "audit.spliced"),
    ("splice: segment of another device", lambda b, t: (_other_log_segment(b, t, OTHER_KEY), b.head),
     "audit.mac_mismatch"),
    ("segments renamed (swapped ids)",
     lambda b, t: ([(b.segments[0][0], b.segments[1][1]), (b.segments[1][0], b.segments[0][1]), b.segments[2]],
                   b.head), "audit.segment_renamed"),
    ("torn line in a middle segment", lambda b, t: (
        [b.segments[0], (b.segments[1][0], b.segments[1][1][:-40]), b.segments[2]], b.head), "audit.torn_segment"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    b = build_log(tmp_path_factory.mktemp("audit"), 150, min_last=8)
    assert len(b.segments) == 3 and b.dropped, "the fixture must have rotated and dropped segments"
    return b


def test_reference_log_verifies(built: Built) -> None:
    report = verify_segments(built.segments, KEY, built.head, limits=SMALL)
    assert report.clean and report.anchored and not report.stale_segments
    assert report.head_seq == report.last_seq
    assert report.records == sum(len(lines(d)) for _, d in built.segments)
    assert [s.id for s in report.segments] == [sid for sid, _ in built.segments]


@pytest.mark.parametrize(("name", "attack", "code"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_detected(built: Built, tmp_path: Path, name: str, attack: Attack, code: str) -> None:
    segs, head = attack(built, tmp_path)
    assert segs != built.segments or head != built.head, "attack changed nothing"
    with pytest.raises(AuditTampered) as info:
        verify_segments(segs, KEY, head, limits=SMALL)
    assert info.value.code == code, info.value.reason


def test_wrong_key(built: Built) -> None:
    with pytest.raises(AuditTampered) as info:
        verify_segments(built.segments, OTHER_KEY, built.head, limits=SMALL)
    assert info.value.code == "audit.mac_mismatch"


@pytest.mark.parametrize("cut", [1, 17, 60])
def test_torn_tail_is_incomplete_not_tampered(built: Built, cut: int) -> None:
    sid, data = built.segments[-1]
    segs = [*built.segments[:-1], (sid, data + data.split(b"\n")[-2][:cut])]
    report: VerifyReport = verify_segments(segs, KEY, built.head, limits=SMALL)
    assert report.incomplete_tail is not None and not report.clean
    assert report.incomplete_tail.offset == len(data) and report.incomplete_tail.length == cut
    assert report.last_seq == report.head_seq


def test_torn_tail_hiding_a_complete_record_is_truncation(built: Built) -> None:
    # Cutting the newline AND part of the last complete record: head still names it.
    sid, data = built.segments[-1]
    segs = [*built.segments[:-1], (sid, data[:-5])]
    with pytest.raises(AuditTampered) as info:
        verify_segments(segs, KEY, built.head, limits=SMALL)
    assert info.value.code == "audit.truncated"


def test_head_one_behind_is_a_crash_window_not_tampering(built: Built) -> None:
    report = verify_segments(built.segments, KEY, built.heads[-2], limits=SMALL)
    assert report.clean and report.head_seq == report.last_seq - 1  # type: ignore[operator]


def test_stale_segment_after_anchor_is_accepted(built: Built) -> None:
    # Crash between writing the anchor and unlinking: the dropped segment is still there.
    newest_dropped = max(built.dropped)
    assert newest_dropped == built.segments[0][0] - 1
    segs = [(newest_dropped, built.dropped[newest_dropped]), *built.segments]
    report = verify_segments(segs, KEY, built.head, limits=SMALL)
    assert report.clean and report.stale_segments == (newest_dropped,)


def test_line_longer_than_bound_stops_parser(built: Built) -> None:
    sid, data = built.segments[-1]
    segs = [*built.segments[:-1], (sid, data + b"{" + b"a" * (SMALL.max_line_bytes + 10) + b"\n")]
    with pytest.raises(AuditTampered) as info:
        verify_segments(segs, KEY, built.head, limits=SMALL)
    assert info.value.code == "audit.malformed"


def test_empty_log_without_head_is_empty() -> None:
    report = verify_segments([], KEY, None)
    assert report.records == 0 and report.clean
