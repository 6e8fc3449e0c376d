"""Manifest parser (strict, bounded) and CMS signing/verification details, incl. k-of-n signers."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest

from bootverify.bundle.cms import Keyring, sign_content, verify_signed_content
from bootverify.bundle.manifest import META_SECTION, Manifest, parse_manifest, render_manifest
from bootverify.errors import ManifestError, SignatureError
from bootverify.release.builder import build_bundle
from bootverify.release.pki import Pki
from bootverify.release.signers import load_file_signer
from tests.conftest import need
from tests.ota.otakit import make_device, now

GOOD = (b"[update]\ncompatible=RC-1000\nversion=2.0.0\n\n[bundle]\nformat=verity\nverity-hash=" + b"a" * 64
        + b"\nverity-salt=" + b"b" * 64 + b"\nverity-size=4096\n\n[image.rootfs]\nsha256=" + b"c" * 64
        + b"\nsize=10\nfilename=rootfs.img\n\n[meta.camera]\nsecurity-version=7\nmin-version=1.2\n")

BAD_MANIFESTS = [
    ("unknown section", GOOD + b"[evil]\nx=1\n", "bundle.manifest_section"),
    ("duplicate section", GOOD + b"[update]\nversion=1\n", "bundle.manifest_syntax"),
    ("duplicate key", GOOD.replace(b"version=2.0.0\n", b"version=2.0.0\nversion=3\n"), "bundle.manifest_syntax"),
    ("unknown update key", GOOD.replace(b"version=2.0.0\n", b"version=2.0.0\nhooks=x\n"), "bundle.manifest_key"),
    ("no compatible", GOOD.replace(b"compatible=RC-1000\n", b""), "bundle.manifest_compatible"),
    ("path in filename", GOOD.replace(b"filename=rootfs.img", b"filename=../etc/passwd"), "bundle.manifest_image"),
    ("bad sha256", GOOD.replace(b"c" * 64, b"C" * 64), "bundle.manifest_image"),
    ("negative security version", GOOD.replace(b"security-version=7", b"security-version=-1"),
     "bundle.manifest_value"),
    ("huge security version", GOOD.replace(b"security-version=7", b"security-version=" + b"9" * 30),
     "bundle.manifest_value"),
    ("key outside section", b"x=1\n" + GOOD, "bundle.manifest_syntax"),
    ("not utf-8", GOOD + b"\xff\xfe", "bundle.manifest_syntax"),
    ("too large", GOOD + b"#" * 70_000, "bundle.manifest_size"),
    ("line without =", GOOD + b"[meta.x]\njunk\n", "bundle.manifest_syntax"),
]


def test_parse_good() -> None:
    m = parse_manifest(GOOD)
    assert m.compatible == "RC-1000" and m.security_version == 7 and m.min_version == "1.2"
    assert m.image("rootfs").size == 10
    assert parse_manifest(render_manifest(m)) == m


@pytest.mark.parametrize(("name", "data", "code"), BAD_MANIFESTS, ids=[b[0] for b in BAD_MANIFESTS])
def test_parse_bad(name: str, data: bytes, code: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    assert info.value.code == code


def test_render_refuses_newlines() -> None:
    with pytest.raises(ManifestError):
        render_manifest(Manifest(compatible="x\n[evil]", version="1"))


def _two_signers(tmp_path: Path, pki: Pki) -> tuple[Pki, list[object]]:
    p = Pki(tmp_path / "pki")
    shutil.copytree(pki.directory, p.directory)
    first = load_file_signer(*p.current_signing())
    p.issue_signing(now=now())
    second = load_file_signer(*p.current_signing())
    return p, [first, second]


def test_k_of_n_signers(tmp_path: Path, pki: Pki, keyring: Path, image: Path) -> None:
    _p, signers = _two_signers(tmp_path, pki)
    kr = Keyring.from_pem(keyring.read_bytes())
    der2 = sign_content(b"[update]\ncompatible=x\n", signers, signing_time=now())  # type: ignore[arg-type]
    assert len(verify_signed_content(der2, kr, now(), min_signers=2).signers) == 2
    # Without k-of-n: exactly one signer, as rauc 1.8 (the device table has the install-level row).
    with pytest.raises(SignatureError) as info:
        verify_signed_content(der2, kr, now())
    assert info.value.code == "bundle.signer_count"
    der1 = sign_content(b"[update]\ncompatible=x\n", signers[:1], signing_time=now())  # type: ignore[arg-type]
    with pytest.raises(SignatureError) as info:
        verify_signed_content(der1, kr, now(), min_signers=2)
    assert info.value.code == "bundle.signer_quorum"
    # The same signer twice is one signer.
    dup = sign_content(b"[update]\ncompatible=x\n", [signers[0], signers[0]], signing_time=now())  # type: ignore[list-item]
    with pytest.raises(SignatureError):
        verify_signed_content(dup, kr, now(), min_signers=2)
    # End to end: a device that demands 2 signers installs a 2-signer bundle. rauc 1.8 checks both
    # signatures but then refuses more than one signer: k-of-n bundles are our extension.
    out = tmp_path / "two.raucb"
    build_bundle(out, images={"rootfs": image}, compatible="RC-1000", version="2.0.0", security_version=1,
                 signers=signers, now=now())  # type: ignore[arg-type]
    dev = make_device(tmp_path / "state", keyring, ota={"min_signers": 2})
    assert dev.installer.install(out).slot == "B"
    # The audit record names every signer (by serial: rotated certificates share a subject).
    verified = [d for e, o, d in dev.events if e == "firmware.verify" and o == "success"]
    assert len(verified) == 1
    assert sorted(s["serial"] for s in verified[0]["signers"]) == sorted(
        f"{s.certificate.serial_number:x}" for s in signers)  # type: ignore[attr-defined]
    need("rauc")
    res = subprocess.run(["rauc", "info", "--keyring", str(keyring), str(out)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode != 0 and "Verified inline signature" in res.stderr
    assert "Unsupported number of signers: 2" in res.stderr


def test_openssl_cms_verifies_our_signature(tmp_path: Path, pki: Pki, keyring: Path) -> None:
    need("openssl")
    der = sign_content(b"hello\n", [load_file_signer(*pki.current_signing())], signing_time=now(),
                       crls=[pki.crl()])
    (tmp_path / "sig.der").write_bytes(der)
    res = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
                          "-CAfile", str(keyring), "-binary", "-crl_check"], capture_output=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello\n"


def test_openssl_made_signature_verifies_with_us(tmp_path: Path, pki: Pki, keyring: Path) -> None:
    need("openssl")
    cert, key = pki.current_signing()
    (tmp_path / "m").write_bytes(b"[update]\ncompatible=RC-1000\n")
    subprocess.run(["openssl", "cms", "-sign", "-binary", "-nodetach", "-outform", "DER", "-in", str(tmp_path / "m"),
                    "-signer", str(cert), "-inkey", str(key), "-out", str(tmp_path / "s.der")], check=True,
                   capture_output=True, timeout=60)
    res = verify_signed_content((tmp_path / "s.der").read_bytes(), Keyring.from_pem(keyring.read_bytes()), now())
    assert res.content == b"[update]\ncompatible=RC-1000\n"
    with pytest.raises(SignatureError) as info:
        verify_signed_content((tmp_path / "s.der").read_bytes(), Keyring.from_pem(keyring.read_bytes()),
                              now() + dt.timedelta(days=3650))
    assert info.value.code == "bundle.signer_expired"
    assert META_SECTION == "meta.camera"
