"""The anti-rollback index: a monotonic counter outside the rootfs.

On hardware this is OTP fuses, an RPMB counter or a TPM NV counter (implement
``RollbackIndexStore``); in host mode and QEMU it is a file in the simulated OTP directory
(``StateDir.otp_dir``). It is raised only after mark-good (AVB style), so a failed update can still
fall back to the previous slot, and it is never lowered: ``advance`` to a smaller value is a no-op.
A corrupt store fails closed (StateError, installs refused), never "counter = 0".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agent import rootrequest
from agent.ota.errors import OtaStateError
from bootverify.boot import rollback
from bootverify.boot.errors import CounterError, RollbackError

MAX_INDEX = rollback.MAX_COUNTER


class RollbackIndexStore(Protocol):
    def read(self) -> int: ...

    def advance(self, value: int) -> int:
        """Raise the counter to ``value`` if that is higher; returns the counter afterwards."""
        ...


def check_not_rolled_back(image_security_version: int, index: int) -> None:
    """The boot stage's rule (bootverify.boot.rollback.check) with the OTA error code."""
    try:
        rollback.check(image_security_version, index)
    except RollbackError as exc:
        raise OtaStateError(exc.message, code="ota.rollback_blocked") from exc


class FileRollbackIndex:
    """Simulated RPMB/OTP: ``otp/security-version``, the very file and code the initramfs stage and
    the attestation use (bootverify.boot.rollback)."""

    FILE = rollback.COUNTER_FILE

    def __init__(self, otp_dir: Path) -> None:
        self._dir = otp_dir

    def read(self) -> int:
        try:
            return rollback.read_counter(self._dir)
        except CounterError as exc:
            raise OtaStateError("rollback index store is corrupt", code="ota.rollback_store") from exc

    def advance(self, value: int) -> int:
        try:
            return rollback.raise_to(self._dir, value)
        except CounterError as exc:
            raise OtaStateError(f"rollback index: {exc.message}", code="ota.rollback_store") from exc


class RootRaisedRollbackIndex:
    """The board's counter: root's file in the sealed OTP directory (bootverify.boot.otp), which
    the agent reads but cannot write. ``advance`` asks init to raise it (agent/rootrequest.py)
    and waits until the file shows at least ``value``; init raises it to the running image's
    signed security version, so a request can never lower it or set a number of the agent's."""

    def __init__(self, otp_dir: Path, fifo: Path, *, timeout_s: float = 120.0, poll_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self._file = FileRollbackIndex(otp_dir)
        self._fifo = fifo
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._clock = clock
        self._sleep = sleep

    def read(self) -> int:
        return self._file.read()

    def advance(self, value: int) -> int:
        current = self.read()
        if value <= current:
            return current
        try:
            rootrequest.send(self._fifo, rootrequest.RAISE_COUNTER)
        except OSError as exc:
            raise OtaStateError(f"rollback index: the board's init took no request ({exc.strerror})",
                                code="ota.rollback_store") from exc
        deadline = self._clock() + self._timeout_s
        while True:
            current = self.read()
            if current >= value:
                return current
            if self._clock() >= deadline:
                raise OtaStateError(f"rollback index: still {current} after {self._timeout_s:g} s, not raised "
                                    f"to {value} (the running image's security version differs?)",
                                    code="ota.rollback_store")
            self._sleep(self._poll_s)
