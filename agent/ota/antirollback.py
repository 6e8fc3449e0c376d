"""The anti-rollback index: a monotonic counter outside the rootfs.

On hardware this is OTP fuses, an RPMB counter or a TPM NV counter (implement
``RollbackIndexStore``); in host mode and QEMU it is a file in the simulated OTP directory
(``StateDir.otp_dir``). It is raised only after mark-good (AVB style), so a failed update can still
fall back to the previous slot, and it is never lowered: ``advance`` to a smaller value is a no-op.
A corrupt store fails closed (StateError, installs refused), never "counter = 0".
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

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
