"""Release side: resign keeps payload and manifest bytes, refuses what does not verify, and every
write of a bundle or PKI file is all-or-nothing (bootverify/fsutil.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bootverify.bundle.bundle import OpenedBundle, open_bundle, verify_whole_payload
from bootverify.bundle.cms import Keyring
from bootverify.errors import SignatureError, VerityError
from bootverify.fsutil import atomic_replace
from bootverify.release.builder import resign_bundle
from bootverify.release.pki import Pki
from tests.ota.otakit import bundle, now, signer_of


def _opened(path: Path, keyring: Path) -> tuple[bytes, OpenedBundle]:
    return _opened_bytes(path.read_bytes(), keyring)


def _opened_bytes(data: bytes, keyring: Path) -> tuple[bytes, OpenedBundle]:
    b = open_bundle(lambda off, n: data[off : off + n], len(data), Keyring.from_pem(keyring.read_bytes()), now())
    return data, b


def test_resign_keeps_payload_and_manifest_bytes(tmp_path: Path, pki: Pki, good_bundle: Path,
                                                keyring: Path) -> None:
    out = tmp_path / "r.raucb"
    kr = Keyring.from_pem(keyring.read_bytes())
    manifest = resign_bundle(good_bundle, out, keyring=kr, signers=[signer_of(pki)], now=now())
    old_data, old = _opened(good_bundle, keyring)
    new_data, new = _opened(out, keyring)
    assert new.content == old.content and new.manifest == manifest
    cut = old.layout.signature_offset
    assert new_data[:cut] == old_data[:cut] and new.layout.signature_offset == cut
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_resign_refuses_an_untrusted_bundle_and_writes_nothing(tmp_path: Path, pki: Pki, other_pki: Pki,
                                                               image: Path, keyring: Path) -> None:
    foreign = bundle(other_pki, tmp_path / "foreign.raucb", image)
    out = tmp_path / "out.raucb"
    with pytest.raises(SignatureError) as info:
        resign_bundle(foreign, out, keyring=Keyring.from_pem(keyring.read_bytes()), signers=[signer_of(pki)],
                      now=now())
    assert info.value.code == "bundle.signer_untrusted"
    assert sorted(os.listdir(tmp_path)) == ["foreign.raucb"]


def test_atomic_replace_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_replace(target, 0o600) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("power cut stand-in: the body never finishes")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]
    with atomic_replace(target, 0o600) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_verify_whole_payload_checks_every_block(good_bundle: Path, keyring: Path) -> None:
    data, b = _opened(good_bundle, keyring)
    assert verify_whole_payload(b) == b.layout.payload_size // 4096
    last = bytearray(data)
    last[b.layout.payload_size - 1] ^= 1  # the very last payload byte (zero padding counts too)
    _, bad = _opened_bytes(bytes(last), keyring)
    with pytest.raises(VerityError):
        verify_whole_payload(bad)
