"""Interop with Debian's rauc 1.8, both ways, with the same release PKI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.ota.errors import OtaRefused
from bootverify.release.pki import Pki
from tests.conftest import need
from tests.ota.otakit import bundle, make_device, make_image


def rauc_info(keyring: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rauc", "info", "--keyring", str(keyring), str(b)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_rauc_accepts_our_bundle(tmp_path: Path, pki: Pki, good_bundle: Path, keyring: Path) -> None:
    need("rauc")
    res = rauc_info(keyring, good_bundle)
    assert res.returncode == 0, res.stderr
    assert "Verified inline signature" in res.stderr
    assert "'RC-1000'" in res.stdout and "'2.0.0'" in res.stdout
    assert "Bundle Format: \tverity" in res.stdout or "verity" in res.stdout


def test_rauc_rejects_tampered_signed_manifest(tmp_path: Path, good_bundle: Path, keyring: Path) -> None:
    need("rauc")
    d = good_bundle.read_bytes()
    i = d.rindex(b"compatible=RC-1000")
    bad = tmp_path / "bad.raucb"
    bad.write_bytes(d[:i] + b"compatible=RC-1001" + d[i + 18 :])
    res = rauc_info(keyring, bad)
    assert res.returncode != 0
    assert "signature" in res.stderr.lower()


def test_rauc_rejects_bundle_from_unknown_ca(tmp_path: Path, other_pki: Pki, image: Path, keyring: Path) -> None:
    need("rauc")
    b = bundle(other_pki, tmp_path / "other.raucb", image)
    assert rauc_info(keyring, b).returncode != 0


def _rauc_bundle(tmp_path: Path, pki: Pki, image: Path, compatible: str = "RC-1000") -> Path:
    content = tmp_path / "content"
    content.mkdir()
    (content / "rootfs.img").write_bytes(image.read_bytes())
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion=3.1.0\n\n[bundle]\nformat=verity\n\n"
        "[image.rootfs]\nfilename=rootfs.img\n")
    cert, key = pki.current_signing()
    out = tmp_path / "rauc-made.raucb"
    res = subprocess.run(["rauc", "bundle", "--cert", str(cert), "--key", str(key), str(content), str(out)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    return out


def test_our_installer_accepts_rauc_bundle(tmp_path: Path, pki: Pki, keyring: Path) -> None:
    need("rauc", "mksquashfs")
    image = make_image(tmp_path / "img", 700_000, seed=3)
    b = _rauc_bundle(tmp_path, pki, image)
    dev = make_device(tmp_path / "state", keyring)
    res = dev.installer.install(b)
    assert res.version == "3.1.0"
    assert res.security_version == 0  # rauc bundle keeps no [meta.*]: the lowest level
    assert dev.slot_b.read_bytes() == image.read_bytes()


def test_rauc_bundle_below_rollback_index_refused(tmp_path: Path, pki: Pki, keyring: Path) -> None:
    need("rauc", "mksquashfs")
    image = make_image(tmp_path / "img", 300_000, seed=4)
    b = _rauc_bundle(tmp_path, pki, image)
    dev = make_device(tmp_path / "state", keyring)
    dev.installer.rollback.advance(1)
    with pytest.raises(OtaRefused) as info:
        dev.installer.install(b)
    assert info.value.reason == "ota.rollback_blocked"


def test_tiny_image_bundle(tmp_path: Path, pki: Pki, keyring: Path) -> None:
    """A payload of one block would have an empty verity tree, which RAUC refuses to install:
    the builder pads to two blocks."""
    need("rauc")
    img = tmp_path / "tiny.img"
    img.write_bytes(b"hello\n")
    b = bundle(pki, tmp_path / "tiny.raucb", img)
    res = rauc_info(keyring, b)
    assert res.returncode == 0, res.stderr
    assert "Verity Size: \t4096" in res.stdout
    dev = make_device(tmp_path / "state", keyring)
    dev.installer.install(b)
    assert dev.slot_b.read_bytes() == b"hello\n"
