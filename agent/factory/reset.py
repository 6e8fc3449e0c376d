"""Factory reset: the only way back to factory state. It wipes identity and data, and is audited.

The audit log itself survives (it holds no secret and is the record that the reset happened), as
do the OTP secret (hardware on a board) and the OTA slot state (which firmware is installed is
not user data). Everything else under the data partition goes: keys, certificates, accounts,
settings, the claim.
"""

from __future__ import annotations

import shutil

from agent.factory.device import AuditSink
from agent.state import StateDir, ensure_dir, fsync_dir

_KEEP = {"audit", "ota"}


def factory_reset(state: StateDir, audit: AuditSink, *, actor: str | None, source: str | None) -> list[str]:
    audit.append("factory.reset", outcome="info", actor=actor, source=source, details={"phase": "start"})
    wiped: list[str] = []
    if state.data.exists():
        for entry in sorted(state.data.iterdir()):
            if entry.name in _KEEP:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            wiped.append(entry.name)
        fsync_dir(state.data)
    state.setup_code_file.unlink(missing_ok=True)
    ensure_dir(state.identity_dir)
    audit.append("factory.reset", outcome="success", actor=actor, source=source, details={"wiped": wiped})
    return wiped
