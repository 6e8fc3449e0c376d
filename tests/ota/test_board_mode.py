"""Board-style configuration: partition-like slots (never truncated), one env copy as on the FAT
partition, and the on-disk formats the initramfs stage (bootverify/boot) reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootverify.boot import rollback as boot_rollback
from bootverify.boot import ubootenv as boot_env
from bootverify.release.pki import Pki
from tests.ota.otakit import bundle, make_device, make_image


def test_device_slots_and_single_env(tmp_path: Path, pki: Pki, keyring: Path) -> None:
    parts = {s: tmp_path / f"vda-{s}" for s in ("A", "B")}
    for p in parts.values():
        p.write_bytes(b"\xee" * (4 * 1024 * 1024))  # a partition: fixed size, old content
    env_file = tmp_path / "boot" / "uboot.env"
    env_file.parent.mkdir()
    dev = make_device(tmp_path / "state", keyring, active_image=b"", ota={
        "slots": {"type": "device", "A": str(parts["A"]), "B": str(parts["B"])},
        "env": {"primary": str(env_file), "redundant": None, "size": 0x4000},
        "booted": "file"})
    image = make_image(tmp_path / "img", 1_000_000, seed=31)
    dev.installer.install(bundle(pki, tmp_path / "b.raucb", image, security_version=6))
    part_b = parts["B"].read_bytes()
    assert len(part_b) == 4 * 1024 * 1024  # not truncated
    assert part_b[: 1_000_000] == image.read_bytes()
    assert parts["A"].read_bytes() == b"\xee" * (4 * 1024 * 1024)
    # The initramfs stage's parser reads our single-copy environment.
    env = boot_env.parse_env(env_file.read_bytes())
    assert env["BOOT_ORDER"] == "B A" and env["BOOT_B_LEFT"] == "3"
    assert boot_env.boot_state(env) == (("B", "A"), {"A": 3, "B": 3})
    dev.installer.simulate_boot()
    dev.installer.confirm()
    # ... and the rollback counter file it checks images against.
    assert boot_rollback.read_counter(dev.state.otp_dir) == 6


def test_fit_and_rootfs_partitions_with_redundant_env(tmp_path: Path, pki: Pki, keyring: Path) -> None:
    """The reference board's layout: slot X = FIT partition + rootfs partition, env copies on FAT."""
    from bootverify.release.builder import build_bundle
    from tests.ota.otakit import now, signer_of

    parts = {n: tmp_path / f"vda{n}" for n in (2, 3, 4, 5)}
    for p in parts.values():
        p.write_bytes(bytes(2 * 1024 * 1024))
    fat = tmp_path / "fat"
    fat.mkdir()
    dev = make_device(tmp_path / "state", keyring, active_image=b"", ota={
        "slots": {"type": "device", "A": {"fit": str(parts[2]), "rootfs": str(parts[4])},
                  "B": {"fit": str(parts[3]), "rootfs": str(parts[5])}},
        "slot_classes": ["fit", "rootfs"],
        "env": {"primary": str(fat / "uboot.env"), "redundant": str(fat / "uboot.env.redund")}})
    fit = make_image(tmp_path / "fit", 300_000, seed=41)
    rootfs = make_image(tmp_path / "rootfs", 1_200_000, seed=42)
    b = tmp_path / "board.raucb"
    build_bundle(b, images={"fit": fit, "rootfs": rootfs}, compatible="RC-1000", version="2.0.0",
                 security_version=1, signers=[signer_of(pki)], now=now())
    assert dev.installer.install(b).slot == "B"
    assert parts[3].read_bytes()[:300_000] == fit.read_bytes()
    assert parts[5].read_bytes()[:1_200_000] == rootfs.read_bytes()
    assert parts[2].read_bytes() == parts[4].read_bytes() == bytes(2 * 1024 * 1024)
    env = boot_env.pick_redundant((fat / "uboot.env").read_bytes(), (fat / "uboot.env.redund").read_bytes())
    assert env["BOOT_ORDER"] == "B A"
    # A rootfs-only bundle lacks the FIT: refused before anything is written.
    from agent.ota.errors import OtaRefused

    with pytest.raises(OtaRefused) as info:
        dev.installer.install(bundle(pki, tmp_path / "only.raucb", rootfs, version="2.0.1"))
    assert info.value.reason == "bundle.no_image"


def test_we_read_the_boot_stage_env(tmp_path: Path, keyring: Path) -> None:
    env_file = tmp_path / "uboot.env"
    env_file.write_bytes(boot_env.build_env({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "1", "BOOT_B_LEFT": "3"}))
    dev = make_device(tmp_path / "state", keyring, ota={"env": {"primary": str(env_file), "redundant": None}})
    st = dev.installer.status()
    assert st["boot_order"] == ["A", "B"] and st["attempts_left"] == {"A": 1, "B": 3}
