"""The firmware identity the device reports to the station (version and SHA-256).

On the board, bootverify writes what U-Boot and the initramfs measured into the attestation file
(the image hash that the certification evidence records). In host mode there is no image, so the
digest covers the agent's own Python sources, which is what would change between firmware builds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from agent.state import StateDir

_MAX_ATTESTATION = 64 * 1024
_KEYS = ("firmware_sha256", "image_sha256", "rootfs_sha256")


def _from_attestation(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_ATTESTATION + 1)
    except OSError:
        return None
    if len(raw) > _MAX_ATTESTATION:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    for key in _KEYS:
        value = doc.get(key)
        if isinstance(value, str) and len(value) == 64:
            return value.lower()
    return None


def _source_digest() -> str:
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def firmware_sha256(state: StateDir) -> str:
    return _from_attestation(state.attestation_file) or _source_digest()
