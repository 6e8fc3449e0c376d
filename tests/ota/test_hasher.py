"""The hashing worker process (agent/ota/hasher.py) on its own: the digests it writes are the
verity digests of the bytes it read, a short file is reported as such, requests the installer
never sends stop it, it holds no descriptor but its own four, and it dies with the installer."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ota import hasher
from agent.ota.pipeline import _HashWorkers
from tests.ota.powercut_worker import running

SPAN = 4 * 4096
BUFFERS = 3


@pytest.fixture
def payload(tmp_path: Path) -> Iterator[tuple[Path, bytes, int]]:
    data = os.urandom(10 * 4096)
    path = tmp_path / "bundle"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    yield path, data, fd
    os.close(fd)


def _digests(salt: bytes, data: bytes) -> bytes:
    return b"".join(hashlib.sha256(salt + data[i : i + 4096]).digest() for i in range(0, len(data), 4096))


def test_worker_reads_and_hashes_into_shared_memory(payload: tuple[Path, bytes, int]) -> None:
    _path, data, fd = payload
    salt = os.urandom(32)
    pool = _HashWorkers(fd, salt, 1, BUFFERS, SPAN)
    try:
        pool.submit(0, 2, 4096, SPAN)  # buffer 2, blocks 1..4
        pool.submit(0, 0, 8 * 4096, SPAN)  # blocks 8..11: the file ends after block 9
        assert pool.reply(0) == (2, SPAN)
        assert bytes(pool.data(2)) == data[4096 : 4096 + SPAN]
        assert pool.digests(2, 4) == _digests(salt, data[4096 : 4096 + SPAN])
        assert pool.reply(0) == (0, 2 * 4096)  # short: the caller refuses the span
    finally:
        pool.close()


@pytest.mark.parametrize("request_fields", [(BUFFERS, 0, 4096), (0, 0, 100), (0, 0, SPAN + 4096), (0, 0, 0)])
def test_worker_stops_at_a_request_it_cannot_serve(payload: tuple[Path, bytes, int],
                                                   request_fields: tuple[int, int, int]) -> None:
    _path, _data, fd = payload
    pool = _HashWorkers(fd, bytes(32), 1, BUFFERS, SPAN)
    try:
        pool.submit(0, *request_fields)
        with pytest.raises(OSError, match=f"hashing worker exited \\({hasher.EXIT_PROTOCOL}\\)"):
            for _ in range(50):  # the exit code is read once the process is gone
                try:
                    pool.reply(0)
                except OSError as exc:
                    if "None" not in str(exc):
                        raise
                time.sleep(0.05)
    finally:
        pool.close()


def test_worker_holds_only_its_own_descriptors(payload: tuple[Path, bytes, int], tmp_path: Path) -> None:
    """No slot, state file or socket of the installer leaks into the worker: it can only read
    the bundle and write the shared buffers and its reply pipe."""
    path, _data, fd = payload
    unrelated = os.open(tmp_path / "slot.img", os.O_WRONLY | os.O_CREAT, 0o600)
    os.set_inheritable(unrelated, True)  # even a descriptor that is inheritable by mistake
    pool = _HashWorkers(fd, bytes(32), 1, BUFFERS, SPAN)
    try:
        pid = pool._procs[0].pid
        pool.submit(0, 0, 0, 4096)
        assert pool.reply(0) == (0, 4096)  # started and serving
        fds = {int(n): os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
    finally:
        pool.close()
        os.close(unrelated)
    assert fds.pop(0) == fds.pop(1) == "/dev/null"
    fds.pop(2)  # the installer's stderr: a worker's traceback belongs in the agent's log
    targets = sorted(fds.values())
    assert str(path) in targets
    assert all(t in (str(path), "/memfd:ota-spans (deleted)") or t.startswith("pipe:") for t in targets), targets
    assert sum(t.startswith("pipe:") for t in targets) == 2


def test_worker_exits_when_the_installer_is_killed(payload: tuple[Path, bytes, int], tmp_path: Path) -> None:
    path, _data, _fd = payload
    script = textwrap.dedent(f"""
        import os, sys, time
        from agent.ota.pipeline import _HashWorkers
        fd = os.open({str(path)!r}, os.O_RDONLY)
        pool = _HashWorkers(fd, bytes(32), 1, 3, 16384)
        print(pool._procs[0].pid, flush=True)
        time.sleep(60)
    """)
    installer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 cwd=Path(__file__).resolve().parents[2])
    try:
        assert installer.stdout is not None
        worker = int(installer.stdout.readline())
    finally:
        installer.send_signal(signal.SIGKILL)
        installer.wait()
    deadline = time.monotonic() + 10
    while running(worker):
        if time.monotonic() > deadline:
            pytest.fail(f"hashing worker {worker} outlived the killed installer")
        time.sleep(0.02)
