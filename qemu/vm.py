"""Run the board in QEMU and watch its serial console (tests, `make run-qemu`, benchmarks).

Every run has a hard deadline: a guest that hangs (a shell on the console, a stuck boot) must
not hang the caller.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from qemu.board import BoardRun


class GuestTimeout(AssertionError):
    pass


class Guest:
    def __init__(self, board: BoardRun, log_path: Path, *, deadline_s: float = 300.0) -> None:
        self.board = board
        self.log_path = log_path
        self.deadline = time.monotonic() + deadline_s
        self._buf = bytearray()
        self._lock = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self.t0 = 0.0
        self.marks: dict[str, float] = {}

    def start(self) -> Guest:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self._proc = subprocess.Popen(
            self.board.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._watchdog, daemon=True).start()
        return self

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with open(self.log_path, "wb") as log:
            while True:
                chunk = os.read(self._proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                with self._lock:
                    self._buf += chunk
                    self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def _watchdog(self) -> None:
        while self.running:
            if time.monotonic() > self.deadline:
                self.kill()
                return
            time.sleep(0.5)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def output(self) -> str:
        with self._lock:
            return self._buf.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120.0, *, start: int = 0) -> re.Match[str]:
        """Wait until ``pattern`` (regex) appears in the console output after offset ``start``."""
        rx = re.compile(pattern)
        end = min(time.monotonic() + timeout, self.deadline)
        with self._lock:
            while True:
                m = rx.search(self._buf.decode(errors="replace"), start)
                if m:
                    self.marks[pattern] = time.monotonic() - self.t0
                    return m
                remaining = end - time.monotonic()
                if remaining <= 0 or (self._proc is not None and self._proc.poll() is not None and not m):
                    if self._proc is not None and self._proc.poll() is not None:
                        m = rx.search(self._buf.decode(errors="replace"), start)
                        if m:
                            return m
                    raise GuestTimeout(f"{pattern!r} not seen; console tail:\n{self.output[-3000:]}")
                self._lock.wait(min(remaining, 1.0))

    def send(self, text: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

    def powerdown(self, timeout: float = 60.0) -> bool:
        """Press the board's power button (QMP system_powerdown); True if the guest powered off."""
        if self.board.qmp is None or not self.running:
            return not self.running
        import json
        import socket

        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(self.board.qmp))
                s.recv(4096)
                for cmd in ("qmp_capabilities", "system_powerdown"):
                    s.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
                    s.recv(4096)
        except OSError:
            return False
        try:
            self.wait_exit(timeout)
        except GuestTimeout:
            return False
        return True

    def wait_exit(self, timeout: float) -> int:
        assert self._proc is not None
        try:
            return self._proc.wait(timeout=max(0.1, min(timeout, self.deadline - time.monotonic())))
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise GuestTimeout(f"guest still running after {timeout} s:\n{self.output[-3000:]}") from exc

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait(timeout=10)

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.kill()
