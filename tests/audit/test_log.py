"""The writer: recovery at open, quarantine of a tampered log, rotation bounds, ordering."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.audit.errors import AuditError, AuditRecordInvalid
from agent.audit.log import AuditLog
from agent.audit.verify import HEAD_FILE, QUARANTINE_DIR, list_segments, quarantined, verify_directory
from tests.audit.logfactory import KEY, SEGMENT_BYTES, SMALL, FakeClock, build_log


def open_log(directory: Path, **kw: object) -> AuditLog:
    args: dict[str, Any] = {"clock": FakeClock(), "max_segment_bytes": SEGMENT_BYTES, "max_segments": 3,
                            "limits": SMALL}
    args.update(kw)
    return AuditLog(directory, KEY, **args)


def records(directory: Path) -> list[dict[str, Any]]:
    out = []
    for _sid, path in list_segments(directory):
        out += [json.loads(line) for line in path.read_bytes().splitlines()]
    return out


def test_fresh_log_record_shape_and_modes(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    log = open_log(d)
    log.append("user.create", outcome="success", actor="owner", source="192.0.2.1", target="bob",
               details={"role": "viewer", "path": Path("/x")})
    log.close()
    recs = records(d)
    assert [r["event"] for r in recs] == ["audit.genesis", "user.create"]
    r = recs[1]
    assert set(r) == {"v", "log", "seg", "seq", "time", "event", "outcome", "actor", "source", "target",
                      "details", "mac"}
    assert r["seq"] == 2 and r["actor"] == "owner" and r["details"] == {"role": "viewer", "path": "/x"}
    assert r["time"].endswith("Z") and len(r["time"]) == len("2026-01-01T00:00:00.000Z")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for p in d.iterdir():
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    assert verify_directory(d, KEY, limits=SMALL).clean


def test_invalid_calls_raise_and_write_nothing(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    with pytest.raises(AuditRecordInvalid):
        log.append("Not An Event", outcome="success")
    with pytest.raises(AuditRecordInvalid):
        log.append("auth.login", outcome="maybe")
    log.close()
    with pytest.raises(AuditError):
        log.append("auth.login", outcome="success")
    assert [r["event"] for r in records(tmp_path)] == ["audit.genesis"]


def test_oversized_details_are_replaced_not_lost(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append("settings.change", outcome="success", details={"blob": "x" * 5000})
    log.close()
    last = records(tmp_path)[-1]
    assert last["event"] == "settings.change" and last["details"]["_truncated"] is True


@pytest.mark.parametrize("cut", [1, 30, 120])
def test_torn_tail_is_repaired_and_recorded_on_open(tmp_path: Path, cut: int) -> None:
    build_log(tmp_path, 20)
    _sid, path = list_segments(tmp_path)[-1]
    whole = path.read_bytes()
    # What a power cut mid-write leaves: part of a line, no newline.
    with open(path, "ab") as fh:
        fh.write(whole.split(b"\n")[-2][:cut])
    assert verify_directory(tmp_path, KEY, limits=SMALL).incomplete_tail is not None
    log = open_log(tmp_path)
    log.append("auth.login", outcome="success")
    log.close()
    report = verify_directory(tmp_path, KEY, limits=SMALL)
    assert report.clean and report.recovered_events == 1
    recs = records(tmp_path)
    assert recs[-2]["event"] == "audit.recovered" and recs[-2]["details"]["truncated_bytes"] == cut


def test_torn_segment_start_is_redone(tmp_path: Path) -> None:
    # Crash right after a rotate record, while the new segment's first line was being written.
    log = open_log(tmp_path)
    heads: dict[str, bytes] = {}
    log.subscribe(lambda rec: heads.__setitem__(rec.event, (tmp_path / HEAD_FILE).read_bytes()))
    while "audit.rotate" not in heads:
        log.append("auth.login", outcome="success", details={"pad": "p" * 100})
    log.close()
    sid, path = list_segments(tmp_path)[-1]
    path.write_bytes(path.read_bytes()[:50])
    (tmp_path / HEAD_FILE).write_bytes(heads["audit.rotate"])
    report = verify_directory(tmp_path, KEY, limits=SMALL)
    assert report.incomplete_tail is not None and report.incomplete_tail.segment == sid
    assert report.last_event == "audit.rotate" and report.head_seq == report.last_seq
    log = open_log(tmp_path)
    log.append("auth.login", outcome="success")
    log.close()
    report = verify_directory(tmp_path, KEY, limits=SMALL)
    assert report.clean and report.recovered_events == 1
    assert [r["event"] for r in records(tmp_path)][-4:] == [
        "audit.rotate", "audit.segment", "audit.recovered", "auth.login"]


def test_tampered_log_is_quarantined_and_flagged(tmp_path: Path) -> None:
    build_log(tmp_path, 30)
    _sid, path = list_segments(tmp_path)[0]
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"outcome":"failure"', b'"outcome":"success"', 1))
    log = open_log(tmp_path)
    assert log.open_failure is not None and log.open_failure.code == "audit.mac_mismatch"
    log.append("auth.login", outcome="success")
    log.close()
    report = verify_directory(tmp_path, KEY, limits=SMALL)
    # The new chain verifies, but it carries the tamper record, so it is never "clean" again.
    assert not report.clean and report.tamper_events[0]["code"] == "audit.mac_mismatch"
    q = quarantined(tmp_path)
    assert len(q) == 1
    evidence = tmp_path / QUARANTINE_DIR / q[0]
    assert (evidence / path.name).read_bytes() != data  # the tampered bytes are kept as they were
    assert (evidence / HEAD_FILE).exists()


def test_truncation_detected_at_open(tmp_path: Path) -> None:
    build_log(tmp_path, 30)
    _sid, path = list_segments(tmp_path)[-1]
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:-2]) + b"\n")
    log = open_log(tmp_path)
    assert log.open_failure is not None and log.open_failure.code == "audit.truncated"
    log.close()


def test_rotation_keeps_disk_bounded(tmp_path: Path) -> None:
    log = open_log(tmp_path, max_segments=4)
    sizes = []
    for i in range(700):
        log.append("stream.start", outcome="info", actor="viewer1", details={"i": i, "pad": "z" * 40})
        if i % 50 == 0:
            sizes.append(sum(p.stat().st_size for _, p in list_segments(tmp_path)))
    log.close()
    segs = list_segments(tmp_path)
    assert len(segs) == 4 and segs[0][0] > 5
    # A segment may exceed its size only by the rotate record that closes it.
    bound = 4 * (SEGMENT_BYTES + SMALL.max_line_bytes)
    assert max(sizes) <= bound
    report = verify_directory(tmp_path, KEY, limits=SMALL)
    assert report.clean and report.anchored and report.last_seq == report.head_seq
    recs = records(tmp_path)
    anchors = [r for r in recs if r["event"] == "audit.anchor"]
    assert anchors and anchors[-1]["details"]["first_segment"] == segs[0][0]


def test_stale_segment_is_removed_on_open(tmp_path: Path) -> None:
    b = build_log(tmp_path, 150)
    newest_dropped = max(b.dropped)
    (tmp_path / f"seg-{newest_dropped:08d}.jsonl").write_bytes(b.dropped[newest_dropped])
    assert verify_directory(tmp_path, KEY, limits=SMALL).stale_segments == (newest_dropped,)
    open_log(tmp_path).close()
    assert newest_dropped not in [sid for sid, _ in list_segments(tmp_path)]
    assert verify_directory(tmp_path, KEY, limits=SMALL).clean


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    build_log(tmp_path, 40)
    before = verify_directory(tmp_path, KEY, limits=SMALL)
    log = open_log(tmp_path)
    log.append("auth.logout", outcome="success")
    log.close()
    after = verify_directory(tmp_path, KEY, limits=SMALL)
    assert after.clean and after.log_id == before.log_id and after.last_seq == (before.last_seq or 0) + 1


def test_concurrent_appends_from_threads(tmp_path: Path) -> None:
    log = open_log(tmp_path, max_segments=50)
    def worker(n: int) -> None:
        for i in range(60):
            log.append("rtsp.auth", outcome="success", actor=f"t{n}", details={"i": i})
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    recs = [r for r in records(tmp_path) if r["event"] == "rtsp.auth"]
    assert len(recs) == 240
    for n in range(4):  # each thread's own records keep their order
        assert [r["details"]["i"] for r in recs if r["actor"] == f"t{n}"] == list(range(60))
    assert verify_directory(tmp_path, KEY, limits=SMALL).clean


async def test_async_record_keeps_call_order(tmp_path: Path) -> None:
    log = open_log(tmp_path, max_segments=50)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    log.subscribe(lambda rec: seen.append(threading.get_ident()))
    await asyncio.gather(*(log.record("stream.stop", outcome="info", details={"i": i}) for i in range(100)))
    log.close()
    recs = [r for r in records(tmp_path) if r["event"] == "stream.stop"]
    assert [r["details"]["i"] for r in recs] == list(range(100))
    assert seen and loop_thread not in seen  # written off the event loop


def test_listener_failure_does_not_break_logging(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    def bad(_rec: object) -> None:
        raise RuntimeError("boom")
    log.subscribe(bad)
    log.append("auth.login", outcome="success")
    log.close()
    assert records(tmp_path)[-1]["event"] == "auth.login"


def test_open_closes_the_head_lag_window(tmp_path: Path) -> None:
    # Crash between a record's fsync and the head's rename leaves head one behind; if the next
    # writer did not catch up at open, a second crash could leave it two behind (found by kill -9).
    b = build_log(tmp_path, 10)
    (tmp_path / HEAD_FILE).write_bytes(b.heads[-2])
    lagging = verify_directory(tmp_path, KEY, limits=SMALL)
    assert lagging.head_seq == (lagging.last_seq or 0) - 1
    open_log(tmp_path).close()
    fixed = verify_directory(tmp_path, KEY, limits=SMALL)
    assert fixed.clean and fixed.head_seq == fixed.last_seq == lagging.last_seq


def test_empty_new_segment_after_crash_is_recreated(tmp_path: Path) -> None:
    # kill -9 between creating the next segment file and writing its first record (found by the
    # kill -9 stress run): the file exists with 0 bytes.
    log = open_log(tmp_path)
    heads: dict[str, bytes] = {}
    log.subscribe(lambda rec: heads.__setitem__(rec.event, (tmp_path / HEAD_FILE).read_bytes()))
    while "audit.rotate" not in heads:
        log.append("auth.login", outcome="success", details={"pad": "p" * 100})
    log.close()
    sid, path = list_segments(tmp_path)[-1]
    path.write_bytes(b"")
    (tmp_path / HEAD_FILE).write_bytes(heads["audit.rotate"])
    report = verify_directory(tmp_path, KEY, limits=SMALL)
    assert report.incomplete_tail is not None and report.incomplete_tail.segment == sid
    assert report.incomplete_tail.length == 0 and report.last_event == "audit.rotate"
    open_log(tmp_path).close()
    report = verify_directory(tmp_path, KEY, limits=SMALL)
    assert report.clean and [s.id for s in report.segments][-1] == sid


def test_crash_before_the_first_head_is_not_tampering(tmp_path: Path) -> None:
    open_log(tmp_path).close()  # genesis only
    (tmp_path / HEAD_FILE).unlink()
    report = verify_directory(tmp_path, KEY, limits=SMALL)
    assert report.head_seq == 0 and report.last_seq == 1
    log = open_log(tmp_path)
    assert log.open_failure is None
    log.close()
    assert verify_directory(tmp_path, KEY, limits=SMALL).head_seq == 1
