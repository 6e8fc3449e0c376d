"""The anti-rollback index: a monotonic counter outside the rootfs.

On hardware this is OTP fuses, an RPMB counter or a TPM NV counter (implement
``RollbackIndexStore``); in host mode and QEMU it is a file in the simulated OTP directory
(``StateDir.otp_dir``). It is raised only after mark-good (AVB style), so a failed update can still
fall back to the previous slot, and it is never lowered: ``advance`` to a smaller value is a no-op.
A corrupt store fails closed (StateError, installs refused), never "counter = 0".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from agent.ota.errors import OtaStateError
from agent.state import atomic_write, ensure_dir

MAX_INDEX = 2**31 - 1


class RollbackIndexStore(Protocol):
    def read(self) -> int: ...

    def advance(self, value: int) -> int:
        """Raise the counter to ``value`` if that is higher; returns the counter afterwards."""
        ...


def check_not_rolled_back(image_security_version: int, index: int) -> None:
    """Pure rule shared with the boot stage: an image below the index must not install or boot."""
    if image_security_version < index:
        raise OtaStateError(
            f"security version {image_security_version} is below the rollback index {index}",
            code="ota.rollback_blocked",
        )


class FileRollbackIndex:
    """Simulated RPMB/OTP: ``otp/security-version`` (0600), decimal digits, atomically replaced.

    The same file and format the initramfs stage reads (bootverify/boot/rollback.py), so the boot
    check and the installer share one counter.
    """

    FILE = "security-version"

    def __init__(self, otp_dir: Path) -> None:
        self._path = otp_dir / self.FILE
        self._dir = otp_dir

    def read(self) -> int:
        try:
            with open(self._path, "rb") as fh:
                raw = fh.read(32)
        except FileNotFoundError:
            return 0
        text = raw.strip()
        if not text.isdigit() or len(text) > 10 or int(text) > MAX_INDEX:
            raise OtaStateError("rollback index store is corrupt", code="ota.rollback_store")
        return int(text)

    def advance(self, value: int) -> int:
        if not 0 <= value <= MAX_INDEX:
            raise OtaStateError("rollback index out of range", code="ota.rollback_store")
        current = self.read()
        if value <= current:
            return current
        ensure_dir(self._dir)
        atomic_write(self._path, f"{value}\n".encode())
        os.chmod(self._path, 0o600)
        return value
