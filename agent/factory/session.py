"""The device's persistent factory session: one JSON file, rewritten atomically after each step.

A device killed at any point comes back in the last committed step. The identity becomes the
device's own only when ``agent.identity.provisioned`` writes provisioned.json (the single commit
point of the lock); until then everything here is pending and a factory reset throws it away.
"""

from __future__ import annotations

import base64
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import StateError
from agent.identity.provisioned import record_path
from agent.state import StateDir, atomic_write_json, ensure_dir, read_json

SESSION_DIR = "factory"
SESSION_FILE = "session.json"
MAX_NONCES = 256


@dataclass
class Session:
    phase: str = "new"  # new -> keys -> certified -> proven -> coded (-> provisioned.json)
    serial: str = ""  # assigned by the station when the device has none fused
    sealed_keys: dict[str, str] = field(default_factory=dict)  # kind -> base64(sealed PKCS#8)
    csrs: dict[str, str] = field(default_factory=dict)
    chains: dict[str, str] = field(default_factory=dict)
    proven_for: str = ""  # SHA-256 of the chains a challenge was answered for
    code_for: str = ""  # SHA-256 of the chains the setup code was installed with
    nonces: list[str] = field(default_factory=list)  # SHA-256 of every nonce already answered
    station: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "phase": self.phase,
            "serial": self.serial,
            "sealed_keys": self.sealed_keys,
            "csrs": self.csrs,
            "chains": self.chains,
            "proven_for": self.proven_for,
            "code_for": self.code_for,
            "nonces": self.nonces[-MAX_NONCES:],
            "station": self.station,
        }

    @classmethod
    def from_json(cls, doc: object) -> Session:
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise StateError("factory session has an unknown format", code="factory.session_corrupt")
        try:
            return cls(
                phase=str(doc["phase"]),
                serial=str(doc["serial"]),
                sealed_keys={str(k): str(v) for k, v in dict(doc["sealed_keys"]).items()},
                csrs={str(k): str(v) for k, v in dict(doc["csrs"]).items()},
                chains={str(k): str(v) for k, v in dict(doc["chains"]).items()},
                proven_for=str(doc["proven_for"]),
                code_for=str(doc["code_for"]),
                nonces=[str(n) for n in list(doc["nonces"])],
                station=str(doc["station"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError("factory session is corrupt", code="factory.session_corrupt") from exc

    def sealed_key(self, kind: str) -> bytes:
        return base64.b64decode(self.sealed_keys[kind])


def session_dir(state: StateDir) -> Path:
    return state.identity_dir / SESSION_DIR


def provisioned_file(state: StateDir) -> Path:
    return record_path(state)


def is_factory_state(state: StateDir) -> bool:
    """True while the device waits for (or is in) factory provisioning and is not locked.

    The core's HTTPS middleware refuses every API while this holds. provisioned.json is the commit
    point of the lock, so it wins over a leftover session directory.
    """
    return (session_dir(state) / SESSION_FILE).exists() and not provisioned_file(state).exists()


def enter(state: StateDir) -> Session:
    """Open the session, creating it on first entry into factory state."""
    directory = ensure_dir(session_dir(state))
    path = directory / SESSION_FILE
    try:
        return Session.from_json(read_json(path, max_bytes=256 * 1024))
    except FileNotFoundError:
        session = Session()
        save(state, session)
        return session


def save(state: StateDir, session: Session) -> None:
    atomic_write_json(session_dir(state) / SESSION_FILE, session.to_json())


def discard(state: StateDir) -> None:
    shutil.rmtree(session_dir(state), ignore_errors=True)
