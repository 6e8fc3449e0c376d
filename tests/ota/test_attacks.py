"""Attack table: every bad bundle is refused, the active slot is untouched, the reason is audited.

Rows are data: (name, how to make the bundle from the good one, the audited reason codes allowed).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.ota.errors import OtaRefused
from bootverify.bundle.cms import Keyring, file_signer, sign_content
from bootverify.bundle.manifest import parse_manifest, render_manifest
from bootverify.release.builder import resign_bundle
from bootverify.release.pki import Pki
from bootverify.release.signers import load_file_signer
from tests.ota.otakit import bundle, make_device, now, sha


@dataclass
class Ctx:
    good: Path
    pki: Pki
    other: Pki
    image: Path
    tmp: Path


def _trailer(data: bytes) -> tuple[int, int]:
    n = int.from_bytes(data[-8:], "big")
    return len(data) - 8 - n, n


def _payload_offset_of_image(data: bytes) -> int:
    # The image is the large file in the squashfs: a byte in the middle of the payload hits it.
    sig_off, _ = _trailer(data)
    return sig_off // 3


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1 :]


def w(ctx: Ctx, name: str, data: bytes) -> Path:
    p = ctx.tmp / name
    p.write_bytes(data)
    return p


def flipped_payload_block(ctx: Ctx) -> Path:
    d = ctx.good.read_bytes()
    return w(ctx, "flip.raucb", flip(d, _payload_offset_of_image(d)))


def flipped_superblock(ctx: Ctx) -> Path:
    return w(ctx, "flipsb.raucb", flip(ctx.good.read_bytes(), 20))


def flipped_hash_tree(ctx: Ctx) -> Path:
    d = ctx.good.read_bytes()
    sig_off, _ = _trailer(d)
    return w(ctx, "fliptree.raucb", flip(d, sig_off - 100))


def edited_manifest(ctx: Ctx) -> Path:
    d = ctx.good.read_bytes()
    i = d.rindex(b"version=2.0.0")
    return w(ctx, "edit.raucb", d[:i] + b"version=9.0.0" + d[i + 13 :])


def edited_security_version(ctx: Ctx) -> Path:
    d = ctx.good.read_bytes()
    i = d.rindex(b"security-version=1")
    return w(ctx, "editsv.raucb", d[:i] + b"security-version=7" + d[i + 18 :])


def unknown_ca(ctx: Ctx) -> Path:
    return bundle(ctx.other, ctx.tmp / "unknown.raucb", ctx.image)


def _pki_copy(ctx: Ctx, name: str) -> Pki:
    dst = ctx.tmp / name
    shutil.copytree(ctx.pki.directory, dst)
    return Pki(dst)


def expired_signer(ctx: Ctx) -> Path:
    p = _pki_copy(ctx, "pki-expired")
    p.issue_signing(now=now(), days=1, not_before=now() - dt.timedelta(days=3))
    return bundle(p, ctx.tmp / "expired.raucb", ctx.image)


def not_yet_valid_signer(ctx: Ctx) -> Path:
    p = _pki_copy(ctx, "pki-future")
    p.issue_signing(now=now(), days=30, not_before=now() + dt.timedelta(days=2))
    return bundle(p, ctx.tmp / "future.raucb", ctx.image)


def revoked_signer(ctx: Ctx) -> Path:
    p = _pki_copy(ctx, "pki-revoked")
    serial = p.issue_signing(now=now())
    signer = load_file_signer(*p.signing_files(serial))
    p.revoke(serial, now=now())
    return bundle(p, ctx.tmp / "revoked.raucb", ctx.image, signer=signer)


def root_signs_directly(ctx: Ctx) -> Path:
    cert, key = ctx.pki.root()
    return bundle(ctx.pki, ctx.tmp / "rootsig.raucb", ctx.image, signer=file_signer(cert, key))


def two_valid_signers(ctx: Ctx) -> Path:
    """Both signatures valid under the device's root; a device not set up for k-of-n refuses the
    bundle as rauc 1.8 does (docs/ota.md, "Multi-signer bundles")."""
    p = _pki_copy(ctx, "pki-two")
    first = load_file_signer(*p.current_signing())
    p.issue_signing(now=now())
    out = ctx.tmp / "two.raucb"
    resign_bundle(ctx.good, out, keyring=Keyring.from_pem(ctx.pki.root_cert_file.read_bytes()),
                  signers=[first, load_file_signer(*p.current_signing())], now=now())
    return out


def wrong_model(ctx: Ctx) -> Path:
    return bundle(ctx.pki, ctx.tmp / "model.raucb", ctx.image, compatible="RC-2000")


def older_security_version(ctx: Ctx) -> Path:
    return bundle(ctx.pki, ctx.tmp / "old.raucb", ctx.image, security_version=3)


def older_version(ctx: Ctx) -> Path:
    return bundle(ctx.pki, ctx.tmp / "oldver.raucb", ctx.image, version="0.9.0", security_version=9)


def min_version_unmet(ctx: Ctx) -> Path:
    return bundle(ctx.pki, ctx.tmp / "minver.raucb", ctx.image, min_version="1.5.0")


def extra_image_without_slot(ctx: Ctx) -> Path:
    """Validly signed, but it also carries an image this device has no slot class for."""
    from bootverify.release.builder import build_bundle
    from tests.ota.otakit import signer_of

    out = ctx.tmp / "extra.raucb"
    build_bundle(out, images={"rootfs": ctx.image, "bootloader": ctx.image}, compatible="RC-1000",
                 version="2.0.0", security_version=1, signers=[signer_of(ctx.pki)], now=now())
    return out


def truncated_half(ctx: Ctx) -> Path:
    d = ctx.good.read_bytes()
    return w(ctx, "half.raucb", d[: len(d) // 2])


def truncated_tail(ctx: Ctx) -> Path:
    d = ctx.good.read_bytes()
    return w(ctx, "tail.raucb", d[:-100])


def truncated_payload(ctx: Ctx) -> Path:
    """Cut 4096 bytes from the payload start but keep the signature and trailer."""
    d = ctx.good.read_bytes()
    return w(ctx, "cutpayload.raucb", d[4096:])


def trailing_garbage(ctx: Ctx) -> Path:
    return w(ctx, "garbage.raucb", ctx.good.read_bytes() + b"\xAA" * 4096)


def garbage_before_signature(ctx: Ctx) -> Path:
    d = ctx.good.read_bytes()
    sig_off, _ = _trailer(d)
    return w(ctx, "inserted.raucb", d[:sig_off] + b"\0" * 4096 + d[sig_off:])


def oversized_signature(ctx: Ctx) -> Path:
    d = ctx.good.read_bytes()
    return w(ctx, "bigsig.raucb", d[:-8] + (10 * 1024 * 1024).to_bytes(8, "big"))


def huge_real_signature(ctx: Ctx) -> Path:
    """A real CMS padded past the limit with many copies of a certificate."""
    d = ctx.good.read_bytes()
    sig_off, _n = _trailer(d)
    manifest = parse_manifest(b"[update]\ncompatible=RC-1000\nversion=2.0.0\n")
    signer = load_file_signer(*ctx.pki.current_signing())
    der = sign_content(render_manifest(manifest) + b"#" * 70_000, [signer], signing_time=now())
    return w(ctx, "hugesig.raucb", d[:sig_off] + der + len(der).to_bytes(8, "big"))


def plain_format(ctx: Ctx) -> Path:
    """Validly signed, but a 'plain' manifest: no verity tree, so nothing checks the payload."""
    d = ctx.good.read_bytes()
    sig_off, _ = _trailer(d)
    m = parse_manifest(b"[update]\ncompatible=RC-1000\nversion=2.0.0\n[bundle]\nformat=plain\n")
    der = sign_content(render_manifest(m), [load_file_signer(*ctx.pki.current_signing())], signing_time=now())
    return w(ctx, "plain.raucb", d[:sig_off] + der + len(der).to_bytes(8, "big"))


def not_a_bundle(ctx: Ctx) -> Path:
    return w(ctx, "random.raucb", bytes(range(256)) * 64)


def empty_file(ctx: Ctx) -> Path:
    return w(ctx, "empty.raucb", b"")


ATTACKS: list[tuple[str, Callable[[Ctx], Path], set[str]]] = [
    ("flipped payload block", flipped_payload_block, {"bundle.verity_mismatch"}),
    ("flipped squashfs superblock", flipped_superblock, {"bundle.verity_mismatch"}),
    ("flipped hash-tree block", flipped_hash_tree, {"bundle.verity_tree"}),
    ("edited manifest version", edited_manifest, {"bundle.content_digest"}),
    ("edited security version", edited_security_version, {"bundle.content_digest"}),
    ("signer from an unknown CA", unknown_ca, {"bundle.signer_untrusted"}),
    ("expired signing certificate", expired_signer, {"bundle.signer_expired"}),
    ("signing certificate not yet valid", not_yet_valid_signer, {"bundle.signer_expired"}),
    ("revoked signing certificate", revoked_signer, {"bundle.signer_revoked"}),
    ("root CA key signs the bundle", root_signs_directly, {"bundle.signer_purpose"}),
    ("two valid signers, device not k-of-n", two_valid_signers, {"bundle.signer_count"}),
    ("wrong model series", wrong_model, {"ota.incompatible"}),
    ("older security version", older_security_version, {"ota.rollback_blocked"}),
    ("older version, newer security version", older_version, {"ota.version_downgrade"}),
    ("min-version not met", min_version_unmet, {"ota.min_version"}),
    ("image without a slot class", extra_image_without_slot, {"ota.unknown_slotclass"}),
    ("truncated to half", truncated_half, {"bundle.signature_size", "bundle.truncated"}),
    ("truncated tail", truncated_tail, {"bundle.signature_size", "bundle.truncated"}),
    ("payload start cut", truncated_payload, {"bundle.layout", "bundle.verity_tree", "bundle.verity_mismatch"}),
    ("trailing garbage", trailing_garbage, {"bundle.signature_size"}),
    ("garbage before the signature", garbage_before_signature, {"bundle.layout", "bundle.verity_tree"}),
    ("oversized signature length", oversized_signature, {"bundle.signature_size"}),
    ("oversized real signature", huge_real_signature, {"bundle.signature_size"}),
    ("plain (non-verity) format", plain_format, {"bundle.not_verity"}),
    ("not a bundle", not_a_bundle, {"bundle.signature_size", "bundle.truncated"}),
    ("empty file", empty_file, {"bundle.truncated"}),
]


@pytest.mark.parametrize(("name", "make", "codes"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_bad_bundle_refused(name: str, make: Callable[[Ctx], Path], codes: set[str], tmp_path: Path,
                            pki: Pki, other_pki: Pki, image: Path, good_bundle: Path, keyring: Path) -> None:
    ctx = Ctx(good_bundle, pki, other_pki, image, tmp_path)
    bad = make(ctx)
    dev = make_device(tmp_path / "state", keyring)
    if name == "older security version":
        dev.installer.rollback.advance(5)
    active_before = sha(dev.slot_a)
    with pytest.raises(OtaRefused) as info:
        dev.installer.install(bad)
    # One opaque answer for every reason.
    assert info.value.message == "update refused" and info.value.code == "ota.refused"
    assert info.value.reason in codes, (info.value.reason, info.value.detail)
    assert dev.reasons()[-1] in codes
    if name == "older security version":
        assert any(e == "firmware.rollback_blocked" and o == "denied" for e, o, _ in dev.events)
    assert sha(dev.slot_a) == active_before
    status = dev.installer.status()
    assert status["boot_order"][0] == "A"
    assert "B" not in status["boot_order"]
    assert status["last_result"]["outcome"] == "refused"
    assert status["last_result"]["reason"] in codes


def test_good_bundle_installs(tmp_path: Path, good_bundle: Path, keyring: Path, image: Path) -> None:
    """The control row: the unmodified bundle goes through the same path and is accepted."""
    dev = make_device(tmp_path / "state", keyring)
    res = dev.installer.install(good_bundle)
    assert res.slot == "B"
    assert dev.slot_b.read_bytes() == image.read_bytes()
    assert dev.installer.status()["boot_order"] == ["B", "A"]


def test_crl_learned_from_a_bundle_blocks_later_bundles(tmp_path: Path, pki: Pki, image: Path,
                                                         keyring: Path) -> None:
    """A revoked signer stays refused even when its bundle carries only the old CRL."""
    p = Pki(tmp_path / "pki")
    shutil.copytree(pki.directory, p.directory)
    old_crl_signer = load_file_signer(*p.current_signing())
    stale = bundle(p, tmp_path / "stale.raucb", image, signer=old_crl_signer, security_version=2)
    revoked_serial = p.issue_signing(now=now())
    revoked_signer_ = load_file_signer(*p.signing_files(revoked_serial))
    old_crl = p.crl()
    p.revoke(revoked_serial, now=now())
    p.issue_signing(now=now())
    # 1: a good bundle that ships the new CRL; the device keeps it.
    first = bundle(p, tmp_path / "first.raucb", image, security_version=1)
    dev = make_device(tmp_path / "state", keyring)
    dev.installer.install(first)
    assert dev.installer.state.crl_file.exists()
    # 2: a bundle by the revoked signer that carries only the older CRL is still refused.
    from bootverify.release.builder import build_bundle

    sneaky = tmp_path / "sneaky.raucb"
    build_bundle(sneaky, images={"rootfs": image}, compatible="RC-1000", version="2.0.1", security_version=1,
                 signers=[revoked_signer_], now=now(), crls=[old_crl])
    with pytest.raises(OtaRefused) as info:
        dev.installer.install(sneaky)
    assert info.value.reason == "bundle.signer_revoked"
    assert stale.exists()
