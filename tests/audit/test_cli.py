"""`camera-agent audit verify|export` as a real process on a real state directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.audit.log import AuditLog
from agent.audit.verify import HEAD_FILE, list_segments
from agent.devicesecret import FileDeviceSecret
from agent.state import StateDir

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "audit", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    st = StateDir.open(tmp_path / "state")
    key = FileDeviceSecret(st.device_secret_file).derive("audit-mac")
    log = AuditLog(st.audit_dir, key)
    for i in range(25):
        log.append("auth.login", outcome="success" if i % 2 else "failure", actor="owner", source="127.0.0.1",
                   details={"i": i})
    log.close()
    return st


def test_verify_clean_log_exits_0(state: StateDir) -> None:
    res = cli("verify", "--state-dir", str(state.root))
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True and report["last_seq"] == 26 and report["head_seq"] == 26


def test_verify_edited_log_exits_1(state: StateDir) -> None:
    _, path = list_segments(state.audit_dir)[0]
    path.write_bytes(path.read_bytes().replace(b'"outcome":"failure"', b'"outcome":"success"', 1))
    res = cli("verify", "--state-dir", str(state.root))
    assert res.returncode == 1
    assert json.loads(res.stdout)["error"]["code"] == "audit.mac_mismatch"


def test_verify_truncated_log_exits_1(state: StateDir) -> None:
    _, path = list_segments(state.audit_dir)[0]
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:-3]) + b"\n")
    res = cli("verify", "--state-dir", str(state.root))
    assert res.returncode == 1 and json.loads(res.stdout)["error"]["code"] == "audit.truncated"


def test_torn_tail_exits_3_then_0_after_agent_reopens(state: StateDir) -> None:
    _, path = list_segments(state.audit_dir)[0]
    with open(path, "ab") as fh:
        fh.write(b'{"actor":"own')
    res = cli("verify", "--state-dir", str(state.root))
    assert res.returncode == 3, res.stdout
    assert json.loads(res.stdout)["incomplete_tail"]["bytes"] == 13
    key = FileDeviceSecret(state.device_secret_file).derive("audit-mac")
    AuditLog(state.audit_dir, key).close()
    assert cli("verify", "--state-dir", str(state.root)).returncode == 0


def test_quarantine_keeps_verify_failing(state: StateDir) -> None:
    (state.audit_dir / HEAD_FILE).unlink()
    key = FileDeviceSecret(state.device_secret_file).derive("audit-mac")
    log = AuditLog(state.audit_dir, key)
    assert log.open_failure is not None and log.open_failure.code == "audit.head_missing"
    log.close()
    res = cli("verify", "--state-dir", str(state.root))
    assert res.returncode == 1
    body = json.loads(res.stdout)
    assert body["quarantined"] and body["tamper_events"][0]["code"] == "audit.head_missing"


def test_missing_secret_exits_4_and_creates_nothing(tmp_path: Path) -> None:
    res = cli("verify", "--state-dir", str(tmp_path / "nothing"))
    assert res.returncode == 4 and "audit.no_key" in res.stderr
    assert not (tmp_path / "nothing").exists()


def test_export_jsonl_since(state: StateDir) -> None:
    res = cli("export", "--state-dir", str(state.root), "--since", "20")
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["seq"] for r in recs] == list(range(20, 27))
    on_disk = list_segments(state.audit_dir)[0][1].read_text().splitlines()
    assert res.stdout.splitlines() == on_disk[19:]


def test_export_rfc5424(state: StateDir) -> None:
    res = cli("export", "--state-dir", str(state.root), "--format", "rfc5424", "--since", "26")
    assert res.returncode == 0, res.stderr
    (line,) = res.stdout.splitlines()
    assert line.startswith("<109>1 ") and " camera-agent - auth.login [audit@32473 seq=\"26\"" in line


def test_export_stops_with_1_at_tampering(state: StateDir) -> None:
    _, path = list_segments(state.audit_dir)[0]
    lines = path.read_bytes().split(b"\n")
    lines[10], lines[11] = lines[11], lines[10]
    path.write_bytes(b"\n".join(lines))
    res = cli("export", "--state-dir", str(state.root))
    assert res.returncode == 1 and "audit.mac_mismatch" in res.stderr
    assert len(res.stdout.splitlines()) == 10  # the authentic prefix only
