"""The device-unique secret and the keys derived from it.

On hardware the secret lives in OTP/eFuses or is sealed by a TPM/TEE/secure element and never
leaves it; ``DeviceSecretProvider`` is the hook an OEM implements for that. In QEMU and host mode
the secret is a 32-byte file outside the rootfs (a simulated OTP), created once from the kernel
RNG. Purpose-separated keys come from HKDF-SHA256 so a leak of one purpose does not expose another.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import StateError
from agent.state import atomic_write
from bootverify.boot import otp

SECRET_LEN = otp.SECRET_LEN


class DeviceSecretProvider(Protocol):
    """Hardware hook: derive a 32-byte key for ``purpose`` without exposing the root secret."""

    def derive(self, purpose: str, length: int = 32) -> bytes: ...


class FileDeviceSecret:
    """Simulated OTP: a 0600 file written once with 32 bytes from ``secrets`` (the kernel RNG)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._root = self._load_or_create()

    def _load_or_create(self) -> bytes:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            raw = secrets.token_bytes(SECRET_LEN)
            # O_EXCL semantics via atomic rename would race with a second process; the agent is
            # the only writer and runs once per state dir, so create-then-check is enough.
            try:
                atomic_write(self._path, raw, 0o600)
            except PermissionError as exc:  # the board's sealed OTP: the boot stage creates it
                raise StateError("no device secret, and the OTP directory is not the agent's to write",
                                 code="state.device_secret") from exc
            return raw
        if len(raw) != SECRET_LEN:
            raise StateError("device secret has the wrong length", code="state.device_secret")
        st = os.stat(self._path)
        # Host mode: the agent's own file, tightened to 0600. On the board it is root's, 0640 to
        # the agent's group (bootverify.boot.otp), and not the agent's to change.
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(self._path, 0o600)
        return raw

    def derive(self, purpose: str, length: int = 32) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(),
            length=length,
            salt=b"camera-firmware/device-secret/v1",
            info=purpose.encode(),
        ).derive(self._root)


def host_serial(secret: DeviceSecretProvider) -> str:
    """The placeholder serial of an unconfigured host-mode device: stable per state dir.

    The factory flow recognises it and lets the station assign the real serial."""
    return "HM" + secret.derive("host-serial", 5).hex().upper()
