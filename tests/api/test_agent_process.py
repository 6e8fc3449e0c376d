"""`camera-agent run` as a real process: first-boot console and setup code, claim with curl,
graceful SIGTERM, state-dir permissions, and `camera-agent audit verify` on what it left behind.

One module fixture runs the agent twice on the same state dir (claim, stop, restart, stop); the
tests then look at what the two runs printed and left on disk. Tamper tests work on copies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.agentharness import STRONG_PASSWORD, AgentProcess, start_agent_process
from tests.conftest import need

# A graceful stop closes listeners, records agent.stop and fsyncs the audit log; "a few seconds".
STOP_BUDGET_S = 5.0
SETUP_CODE_RE = re.compile(r"setup code ([0-9A-Z]{5}(?:-[0-9A-Z]{5}){3})")
PUBLIC_FILES = {"device-ca.pem"}  # the trust anchor clients need; everything else is private


def camera_agent() -> list[str]:
    """The installed console script (what an operator types), next to this interpreter."""
    script = Path(sys.executable).with_name("camera-agent")
    if not script.exists():
        pytest.fail(f"{script} missing: the project is not installed in the venv (make venv)")
    return [str(script)]


def curl_json(proc: AgentProcess, method: str, path: str, body: Any = None,
              token: str | None = None) -> tuple[int, Any]:
    """A request with curl, validating the server certificate against the device CA for 127.0.0.1."""
    cmd = ["curl", "-sS", "--max-time", "20", "--cacert", str(proc.ca_file), "-X", method,
           "-o", "-", "-w", "\n%{http_code}", f"https://127.0.0.1:{proc.https_port}{path}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    if token is not None:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"curl failed ({out.returncode}): {out.stderr}"
    text, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(text) if text.strip() else None


def stop_with_sigterm(proc: AgentProcess) -> tuple[int, float]:
    start = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.proc.kill()
        proc.proc.wait()
        pytest.fail("agent ignored SIGTERM for 30 s")
    return rc, time.monotonic() - start


@dataclass
class Run:
    console: str
    exit_code: int
    stop_seconds: float
    setup_code_mode: int | None = None
    setup_code: str | None = None
    results: dict[str, tuple[int, Any]] = field(default_factory=dict)


@dataclass
class TwoRuns:
    state_dir: Path
    first: Run
    second: Run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRuns]:
    need("curl")
    state = tmp_path_factory.mktemp("proc") / "state"
    procs: list[AgentProcess] = []
    try:
        # First boot: unclaimed, prints the code, claim with curl, log in, use the session.
        p1 = start_agent_process(state)
        procs.append(p1)
        code_file = state / "setup-code"
        mode = stat.S_IMODE(code_file.stat().st_mode)
        code = p1.setup_code
        r1: dict[str, tuple[int, Any]] = {}
        r1["claim"] = curl_json(p1, "POST", "/api/v1/claim",
                                {"setup_code": code, "username": "owner", "password": STRONG_PASSWORD})
        r1["login"] = curl_json(p1, "POST", "/api/v1/login", {"username": "owner", "password": STRONG_PASSWORD})
        token = r1["login"][1]["token"] if r1["login"][0] == 200 else None
        r1["session"] = curl_json(p1, "GET", "/api/v1/session", token=token)
        r1["code_file_after_claim"] = (int(code_file.exists()), None)
        rc1, t1 = stop_with_sigterm(p1)
        first = Run(p1.log.read_text(), rc1, t1, mode, code, r1)

        # Second boot on the same state: already claimed, the account persists.
        p2 = start_agent_process(state)
        procs.append(p2)
        r2: dict[str, tuple[int, Any]] = {}
        r2["login"] = curl_json(p2, "POST", "/api/v1/login", {"username": "owner", "password": STRONG_PASSWORD})
        r2["reclaim"] = curl_json(p2, "POST", "/api/v1/claim",
                                  {"setup_code": code, "username": "intruder", "password": STRONG_PASSWORD})
        rc2, t2 = stop_with_sigterm(p2)
        second = Run(p2.log.read_text(), rc2, t2, results=r2)
        yield TwoRuns(state, first, second)
    finally:
        for p in procs:
            p.stop()


def test_first_boot_prints_setup_code_and_writes_it_0600(runs: TwoRuns) -> None:
    first = runs.first
    assert first.setup_code_mode == 0o600
    printed = SETUP_CODE_RE.findall(first.console)
    assert printed == [first.setup_code], first.console
    assert "UNCLAIMED" in first.console


def test_claim_login_and_session_over_tls_with_curl(runs: TwoRuns) -> None:
    r = runs.first.results
    assert r["claim"] == (201, {"username": "owner", "role": "admin"})
    status, body = r["login"]
    assert status == 200 and body["token_type"] == "Bearer" and body["user"]["role"] == "admin"
    status, body = r["session"]
    assert status == 200 and body["user"] == {"username": "owner", "role": "admin"} and body["kind"] == "bearer"
    assert r["code_file_after_claim"][0] == 0, "the one-time setup code file must be gone after the claim"


def test_sigterm_is_a_graceful_exit_0(runs: TwoRuns) -> None:
    for run in (runs.first, runs.second):
        assert run.exit_code == 0, run.console[-2000:]
        assert run.stop_seconds < STOP_BUDGET_S, f"shutdown took {run.stop_seconds:.1f} s"
        assert "Traceback" not in run.console, run.console[-3000:]


def test_restart_keeps_the_claim_and_prints_no_code(runs: TwoRuns) -> None:
    second = runs.second
    assert "UNCLAIMED" not in second.console and not SETUP_CODE_RE.search(second.console)
    assert not (runs.state_dir / "setup-code").exists()
    assert second.results["login"][0] == 200
    status, body = second.results["reclaim"]
    assert status in (403, 409) and body["error"]["code"].startswith("claim."), body


def test_state_dir_permissions(runs: TwoRuns) -> None:
    bad: list[str] = []
    seen_files = 0
    for root, dirs, files in os.walk(runs.state_dir):
        for d in [root, *(os.path.join(root, x) for x in dirs)]:
            mode = stat.S_IMODE(os.lstat(d).st_mode)
            if mode != 0o700:
                bad.append(f"dir {d}: {mode:o}")
        for f in files:
            path = os.path.join(root, f)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                bad.append(f"{path}: not a regular file")
                continue
            seen_files += 1
            want = 0o644 if os.path.relpath(path, runs.state_dir) in PUBLIC_FILES else 0o600
            if stat.S_IMODE(st.st_mode) != want:
                bad.append(f"file {path}: {stat.S_IMODE(st.st_mode):o} (want {want:o})")
    assert not bad, "\n".join(bad)
    assert seen_files >= 6, "the agent should have written its identity, users, settings and audit files"


def audit_verify(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*camera_agent(), "audit", "verify", "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=60)


def audit_events(state_dir: Path) -> list[dict[str, Any]]:
    out = subprocess.run([*camera_agent(), "audit", "export", "--state-dir", str(state_dir)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_audit_verifies_after_the_runs(runs: TwoRuns) -> None:
    out = audit_verify(runs.state_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    events = [(e["event"], e["outcome"]) for e in audit_events(runs.state_dir)]
    # Both lifecycles and the claim/login are in the log, in order.
    lifecycle = [e for e, _ in events if e in ("agent.start", "agent.stop")]
    assert lifecycle == ["agent.start", "agent.stop", "agent.start", "agent.stop"], events
    assert ("claim", "success") in events and ("auth.login", "success") in events


def _segment(state_dir: Path) -> Path:
    segs = sorted((state_dir / "data" / "audit").glob("seg-*.jsonl"))
    assert segs, "no audit segment"
    return segs[0]


def _edit_in_line(pick: Callable[[list[bytes]], int], old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    """Replace the first ``old`` in the picked line with ``new`` (same length, one byte apart)."""
    assert len(old) == len(new) and sum(a != b for a, b in zip(old, new, strict=True)) == 1

    def edit(data: bytes) -> bytes:
        lines = data.split(b"\n")
        i = pick(lines)
        lines[i] = lines[i].replace(old, new, 1)
        return b"\n".join(lines)

    return edit


def _first_with(marker: bytes) -> Callable[[list[bytes]], int]:
    return lambda lines: next(i for i, ln in enumerate(lines) if marker in ln)


def _flip_mac_digit(data: bytes) -> bytes:
    lines = data.split(b"\n")
    i = len(lines) // 2
    j = lines[i].index(b'"mac":"') + len(b'"mac":"')
    lines[i] = lines[i][:j] + (b"0" if lines[i][j:j + 1] != b"0" else b"1") + lines[i][j + 1:]
    return b"\n".join(lines)


def _join_two_lines(data: bytes) -> bytes:
    j = data.index(b"\n")  # the first record's newline becomes a space: two records in one line
    return data[:j] + b" " + data[j + 1:]


# One byte changed each time; every one must make `audit verify` exit 1 (tampering).
TAMPER_TABLE: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("claim actor renamed", _edit_in_line(_first_with(b'"event":"claim"'), b'"owner"', b'"owneR"')),
    ("login outcome changed", _edit_in_line(_first_with(b'"event":"auth.login"'), b'"success"', b'"Success"')),
    ("mac digit flipped", _flip_mac_digit),
    ("two records joined", _join_two_lines),
]


@pytest.mark.parametrize(("name", "edit"), TAMPER_TABLE, ids=[t[0] for t in TAMPER_TABLE])
def test_one_edited_byte_fails_audit_verify(runs: TwoRuns, tmp_path: Path, name: str,
                                            edit: Callable[[bytes], bytes]) -> None:
    copy = tmp_path / "state"
    shutil.copytree(runs.state_dir, copy)
    seg = _segment(copy)
    before = seg.read_bytes()
    after = edit(before)
    assert len(after) == len(before) and sum(a != b for a, b in zip(before, after, strict=True)) == 1, name
    seg.write_bytes(after)
    out = audit_verify(copy)
    assert out.returncode == 1, f"{name}: exit {out.returncode}\n{out.stdout}{out.stderr}"
    # The untouched original still verifies (the failure is the edit, not the copy).
    assert audit_verify(runs.state_dir).returncode == 0


def test_sigterm_while_capabilities_start_is_still_graceful(tmp_path: Path) -> None:
    """SIGTERM as soon as HTTPS listens (media and RTSPS still starting): exit 0, agent.stop logged.

    An init system or an operator may stop the agent at any moment; a stop that lands between
    the listener and the announcement must not kill the process with the default action.
    """
    from tests.agentharness import free_port

    state = tmp_path / "state"
    state.mkdir()
    log = tmp_path / "agent.log"
    cmd = [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(state),
           "--https-port", str(free_port()), "--rtsps-port", str(free_port()), "--bind", "127.0.0.1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while "HTTPS listening" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "agent did not listen within 60 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    lifecycle = [e["event"] for e in audit_events(state) if e["event"] in ("agent.start", "agent.stop")]
    assert lifecycle[-1] == "agent.stop", lifecycle
