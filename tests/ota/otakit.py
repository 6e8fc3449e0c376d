"""Shared helpers for OTA tests: PKIs generated at run time, bundles, installers on tmp state dirs."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.config import build_config
from agent.ota.config import build_installer
from agent.ota.installer import Installer
from agent.state import StateDir
from bootverify.bundle.cms import Signer
from bootverify.release.builder import build_bundle
from bootverify.release.pki import Pki
from bootverify.release.signers import load_file_signer

COMPATIBLE = "RC-1000"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_image(path: Path, size: int, seed: int = 1) -> Path:
    """Deterministic, partly compressible content (so squashfs really compresses some blocks)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        block = hashlib.shake_256(f"{seed}:{counter}".encode()).digest(4096)
        out += block if counter % 3 else bytes(4096)
        counter += 1
    path.write_bytes(bytes(out[:size]))
    return path


def signer_of(pki: Pki) -> Signer:
    cert, key = pki.current_signing()
    return load_file_signer(cert, key)


def bundle(pki: Pki, out: Path, image: Path, *, version: str = "2.0.0", security_version: int = 1,
           compatible: str = COMPATIBLE, signer: Signer | None = None, crl: bool = True,
           min_version: str | None = None) -> Path:
    build_bundle(out, images={"rootfs": image}, compatible=compatible, version=version,
                 security_version=security_version, signers=[signer or signer_of(pki)], now=now(),
                 crls=[pki.crl()] if crl else [], min_version=min_version)
    return out


@dataclass
class Device:
    state: StateDir
    installer: Installer
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    @property
    def slot_a(self) -> Path:
        return self.state.ota_dir / "slots" / "A.img"

    @property
    def slot_b(self) -> Path:
        return self.state.ota_dir / "slots" / "B.img"

    def reasons(self) -> list[str]:
        return [str(d.get("reason")) for _e, o, d in self.events if o in ("denied", "failure") and "reason" in d]


def make_device(root: Path, keyring: Path, *, ota: Mapping[str, Any] | None = None,
                active_image: bytes = b"factory image A\n" * 4096) -> Device:
    state = StateDir.open(root)
    cfg = build_config(state.root, {"ota": {"keyring": str(keyring), **(ota or {})},
                                    "device": {"model": COMPATIBLE, "firmware_version": "1.0.0"}})
    dev_events: list[tuple[str, str, dict[str, Any]]] = []

    def audit(event: str, outcome: str, details: Mapping[str, Any]) -> None:
        dev_events.append((event, outcome, dict(details)))

    inst = build_installer(cfg, state, audit)
    slots = state.ota_dir / "slots"
    slots.mkdir(exist_ok=True, mode=0o700)
    if active_image and not (slots / "A.img").exists():
        (slots / "A.img").write_bytes(active_image)
    return Device(state, inst, dev_events)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    os.chmod(path, 0o600)
    return path
