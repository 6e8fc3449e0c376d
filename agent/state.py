"""Device state layout and atomic persistence.

The layout is the same in host mode and on the device (see docs/state-layout.md):

    ROOT/                  0700  --state-dir in host mode; /data on the device
      otp/                 0700  simulated OTP (on the board root's, 0750, readable by the agent)
        device-secret      0600  device-unique secret (board: created by the boot stage, 0640)
        security-version   0600  anti-rollback counter (board: raised by root only, 0640)
      setup-code           0600  host mode only, while unclaimed
      data/                0700  persistent data partition
        identity/          0700  device keys (encrypted) and certificates
        users.json         0600  accounts, Argon2id hashes, encrypted digest secrets
        settings.json      0600  validated device settings
        claim.json         0600  hash of the one-time setup code, claimed flag
        audit/             0700  tamper-evident audit log segments
        ota/               0700  slot/boot-chooser state (host mode)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import StateError
from bootverify import fsutil as _fsutil
from bootverify.boot import otp as _otp

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create ``path`` (and parents) and force its mode; a pre-existing looser mode is tightened."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    os.chmod(path, mode)
    return path


# One crash-safe writer for the whole firmware (bootverify must not import agent, so it lives
# there): temp file created with the final mode, fsync, rename, fsync of the directory.
fsync_dir = _fsutil.fsync_dir
atomic_write = _fsutil.atomic_write


def atomic_write_json(path: Path, obj: Any, mode: int = FILE_MODE) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n", mode)


def read_json(path: Path, *, max_bytes: int = 4 * 1024 * 1024) -> Any:
    """Read a JSON state file with a size bound; a corrupt file is a StateError, not a crash."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(f"cannot read {path.name}: {exc.strerror}") from exc
    if len(raw) > max_bytes:
        raise StateError(f"{path.name} exceeds {max_bytes} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise StateError(f"{path.name} is not valid JSON") from exc


@dataclass(frozen=True)
class StateDir:
    """Paths of the device's persistent state. ``open`` creates the directories with 0700."""

    root: Path

    @property
    def otp_dir(self) -> Path:
        return self.root / "otp"

    @property
    def device_secret_file(self) -> Path:
        return self.otp_dir / _otp.SECRET_FILE

    @property
    def setup_code_file(self) -> Path:
        return self.root / "setup-code"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def identity_dir(self) -> Path:
        return self.data / "identity"

    @property
    def users_file(self) -> Path:
        return self.data / "users.json"

    @property
    def settings_file(self) -> Path:
        return self.data / "settings.json"

    @property
    def claim_file(self) -> Path:
        return self.data / "claim.json"

    @property
    def audit_dir(self) -> Path:
        return self.data / "audit"

    @property
    def ota_dir(self) -> Path:
        return self.data / "ota"

    @property
    def attestation_file(self) -> Path:
        """Boot attestation record written by bootverify (read-only for the agent)."""
        return self.root / "run" / "boot-attestation.json"

    @classmethod
    def open(cls, root: Path) -> StateDir:
        state = cls(root.resolve())
        ensure_dir(state.root)
        for d in (state.data, state.identity_dir, state.audit_dir, state.ota_dir):
            ensure_dir(d)
        try:
            otp_owner = os.lstat(state.otp_dir).st_uid
        except FileNotFoundError:
            otp_owner = os.geteuid()
        # On the board root sealed the OTP directory (bootverify.boot.otp: root's, 0750, readable
        # by the agent's group) and the agent leaves it so; in host mode it is the agent's own.
        if otp_owner == os.geteuid():
            ensure_dir(state.otp_dir)
        return state
