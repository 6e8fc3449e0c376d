"""Power-cut driver: fork a real ``camera-agent ota install`` and SIGKILL it at random points.

Run as a separate process by test_powercut.py (so forking never touches pytest's own threads).
The modules are imported once here, then every trial forks, so 100 kills take seconds, not minutes.
Prints one JSON object: per-trial observations of the on-disk state after the kill; the test
asserts the invariants.

    python -m tests.ota.powercut_worker STATE KEYRING BUNDLE TRIALS SEED
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agent.ota import cli
from agent.ota.bootchooser import UBootEnvChooser, select_boot
from agent.ota.ubootenv import EnvLocation, UBootEnv


def _sha(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return "absent"


def _install_child(state: Path, keyring: Path, bundle: Path) -> int:
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            rc = cli.main(["ota", "install", "--state-dir", str(state), "--keyring", str(keyring), str(bundle)])
        except BaseException:
            rc = 3
        os._exit(rc)
    return pid


def _children(pid: int) -> list[int]:
    """The install's hashing workers (the only processes it starts)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            kids += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    except FileNotFoundError:
        pass
    return kids


def running(pid: int) -> bool:
    """Not gone and not a zombie (exited, only the reaping left to whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _outliving(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Workers still running ``timeout`` seconds after the installer was killed (want none: each
    exits when its request pipe closes)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def observe(state: Path) -> dict[str, Any]:
    ota = state / "data" / "ota"
    obs: dict[str, Any] = {"a_sha": _sha(ota / "slots" / "A.img"), "b_sha": _sha(ota / "slots" / "B.img")}
    try:
        env = UBootEnv(EnvLocation(ota / "uboot.env"), EnvLocation(ota / "uboot.env.redund"))
        boot = UBootEnvChooser(env).load()
        obs["boot"] = boot.to_json() if boot else None
        obs["would_boot"] = select_boot(boot)[0] if boot else "A"
    except Exception as exc:
        obs["boot_error"] = repr(exc)
    try:
        obs["slots"] = json.loads((ota / "slots.json").read_bytes())["slots"] if (ota / "slots.json").exists() else {}
    except Exception as exc:
        obs["slots_error"] = repr(exc)
    return obs


def main() -> int:
    state, keyring, bundle = (Path(a) for a in sys.argv[1:4])
    trials, seed = int(sys.argv[4]), int(sys.argv[5])
    rng = random.Random(seed)
    # Two uninterrupted installs: the faster one sets the kill window (a load spike during one of
    # them must not push most kills past the end of the install).
    durations, rcs = [], []
    for _ in range(2):
        t0 = time.monotonic()
        pid = _install_child(state, keyring, bundle)
        _, status = os.waitpid(pid, 0)
        durations.append(time.monotonic() - t0)
        rcs.append(os.waitstatus_to_exitcode(status))
    duration = min(durations)
    out: dict[str, Any] = {"seed": seed, "baseline_rc": max(rcs, key=abs), "duration": duration, "trials": []}
    for _ in range(trials):
        delay = rng.uniform(0, duration)
        pid = _install_child(state, keyring, bundle)
        time.sleep(delay)
        workers = _children(pid)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out["trials"].append({"delay": delay, "killed": code == -signal.SIGKILL, "rc": code,
                              "workers": len(workers), "workers_left": _outliving(workers), **observe(state)})
    pid = _install_child(state, keyring, bundle)
    _, status = os.waitpid(pid, 0)
    out["final_rc"] = os.waitstatus_to_exitcode(status)
    out["final"] = observe(state)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
