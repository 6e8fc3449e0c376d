"""The enforced boot chain in QEMU (ER-01 1.8, 2.10, 1.6): real U-Boot, real kernel, real images.

Each refusal test damages slot A only: U-Boot must refuse A and fall back to slot B (the board's
A/B safety net), and the console shows which rule refused it.
"""

from __future__ import annotations

import gzip
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bootverify.boot import ubootenv
from qemu import disk
from qemu.board import MACHINE, QEMU
from qemu.vm import Guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

BootFn = Callable[..., Guest]
FALLBACK_TO_B = r"camera: booting slot B"


def _refused_then_b(g: Guest, why: str) -> None:
    g.wait_for(why, 90)
    g.wait_for(r"camera: slot A refused", 30)
    g.wait_for(FALLBACK_TO_B, 60)
    g.wait_for(r"Starting kernel", 60)


def _unsigned_fit(image: dict[str, object], out: Path) -> Path:
    """The same kernel + initramfs and the same configuration name, but no signature at all."""
    root = Path(__file__).resolve().parents[2]
    kernel = next((root / "build/stage-boot/boot").glob("vmlinuz-*"))
    gz = out.with_suffix(".gz")
    gz.write_bytes(gzip.compress(kernel.read_bytes(), 6))
    initrd = Path(str(image["fit"])).parent / "initramfs.cpio.lz4"
    its = out.with_suffix(".its")
    its.write_text(f"""/dts-v1/;
/ {{
    description = "unsigned"; #address-cells = <1>;
    images {{
        kernel {{ data = /incbin/("{gz}"); type = "kernel"; arch = "arm64"; os = "linux";
                  compression = "gzip"; load = <0x40400000>; entry = <0x40400000>;
                  hash-1 {{ algo = "sha256"; }}; }};
        initramfs {{ data = /incbin/("{initrd}"); type = "ramdisk"; arch = "arm64"; os = "linux";
                     compression = "none"; hash-1 {{ algo = "sha256"; }}; }};
    }};
    configurations {{ default = "conf"; conf {{ kernel = "kernel"; ramdisk = "initramfs"; }}; }};
}};
""")
    subprocess.run(["mkimage", "-q", "-f", its, out], check=True)
    return out


def _fit_a(image: dict[str, object]) -> bytes:
    return Path(str(image["fit"])).read_bytes()


def test_signed_image_boots_to_green_attestation(release_image: dict[str, object], board_disk: Path,
                                                  boot: BootFn) -> None:
    g = boot(board_disk)
    g.wait_for(r"sha256,rsa3072:camera-release\+ OK", 60)
    g.wait_for(r"camera-bootverify: verified slot A \(conf\)", 90)
    m = g.wait_for(r"attestation (GREEN|YELLOW|RED) slot=A reasons=(\S+)\s", 120)
    assert m.group(1) == "GREEN", g.output[-2000:]
    # Production profile: no console shell, no login prompt.
    assert "DEV PROFILE" not in g.output
    assert "login:" not in g.output


def test_flipped_fit_byte_refused(release_image: dict[str, object], board_disk: Path, boot: BootFn) -> None:
    fit = bytearray(_fit_a(release_image))
    fit[len(fit) // 3] ^= 0x40  # inside the kernel payload
    disk.write_partition(board_disk, "fit_a", bytes(fit))
    g = boot(board_disk)
    _refused_then_b(g, r"Bad hash value|Bad Data Hash|hash.*mismatch|Bad FIT")


def test_fit_signed_by_other_key_refused(release_image: dict[str, object], board_disk: Path, boot: BootFn,
                                         tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    keys = tmp_path / "otherkeys"
    subprocess.run([root / "board/genkey.sh", keys, "camera-release"], check=True)  # same name, other key
    stage = root / "build/stage-boot"
    kernel = next((stage / "boot").glob("vmlinuz-*"))
    initrd = Path(str(release_image["fit"])).parent / "initramfs.cpio.lz4"
    out = tmp_path / "other.itb"
    subprocess.run([root / "board/sign-fit.sh", keys, "camera-release", kernel, initrd, out], check=True)
    disk.write_partition(board_disk, "fit_a", out.read_bytes())
    g = boot(board_disk)
    _refused_then_b(g, r"sha256,rsa3072:camera-release- |Failed to verify required signature|Bad Data Hash")


def test_unsigned_fit_and_legacy_image_refused(release_image: dict[str, object], board_disk: Path,
                                               boot: BootFn, tmp_path: Path) -> None:
    unsigned = _unsigned_fit(release_image, tmp_path / "unsigned.itb")
    legacy = tmp_path / "legacy.img"
    subprocess.run(["mkimage", "-q", "-A", "arm64", "-O", "linux", "-T", "kernel", "-C", "gzip",
                    "-a", "0x40400000", "-e", "0x40400000", "-d", unsigned.with_suffix(".gz"), legacy], check=True)
    # Slot A: unsigned FIT. Slot B: a legacy uImage. Neither may boot: the board powers off.
    disk.write_partition(board_disk, "fit_a", unsigned.read_bytes())
    disk.write_partition(board_disk, "fit_b", legacy.read_bytes())
    g = boot(board_disk, deadline_s=150)
    g.wait_for(r"camera: slot A refused", 90)
    g.wait_for(r"camera: slot B refused", 60)
    g.wait_for(r"camera: no bootable slot", 30)
    g.wait_exit(60)
    assert "Starting kernel" not in g.output
    attempt_a = g.output.split("camera: booting slot A")[1].split("camera: slot A refused")[0]
    assert "Could not find configuration node" not in attempt_a  # refused for the signature, not the name
    assert "Verification failed" in attempt_a or "required" in attempt_a or "Bad" in attempt_a, attempt_a


def test_unsigned_script_and_tampered_env_ignored(release_image: dict[str, object], board_disk: Path,
                                                  boot: BootFn, tmp_path: Path) -> None:
    # An unsigned boot.scr on the boot partition and a stored env that tries verify=n, another
    # bootcmd and a preboot hook. Slot A carries a tampered FIT: if verify=n were obeyed it would boot.
    script_src = tmp_path / "boot.cmd"
    script_src.write_text("echo PWNED-BOOTSCR\n")
    scr = tmp_path / "boot.scr"
    subprocess.run(["mkimage", "-q", "-A", "arm64", "-T", "script", "-C", "none", "-d", script_src, scr], check=True)
    disk.put_file(board_disk, "boot.scr", scr.read_bytes())
    env = ubootenv.build_env({
        "BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3", "verify": "n",
        "bootcmd": "echo PWNED-BOOTCMD", "preboot": "echo PWNED-PREBOOT", "bootdelay": "5",
        "camera_boot": "echo PWNED-CAMERA-BOOT",
    }, flags=9)
    disk.put_file(board_disk, "uboot.env", env)
    fit = bytearray(_fit_a(release_image))
    fit[len(fit) // 3] ^= 0x40
    disk.write_partition(board_disk, "fit_a", bytes(fit))
    g = boot(board_disk)
    _refused_then_b(g, r"Bad hash value|Bad Data Hash|Bad FIT|hash.*mismatch")
    assert "PWNED" not in g.output


def test_stored_counters_are_honoured_and_written(board_disk: Path, boot: BootFn) -> None:
    disk.put_file(board_disk, "uboot.env",
                  ubootenv.build_env({"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "2"}, flags=1))
    g = boot(board_disk)
    g.wait_for(r"camera: slot B attempt \(A_LEFT=3 B_LEFT=1\)", 60)
    g.wait_for(r"Starting kernel", 60)
    g.kill()
    env = ubootenv.pick_redundant(disk.get_file(board_disk, "uboot.env"), disk.get_file(board_disk, "uboot.env.redund"))
    assert ubootenv.boot_state(env) == (("B", "A"), {"A": 3, "B": 1})


def test_no_dtb_or_foreign_dtb_still_enforced(release_image: dict[str, object], board_disk: Path,
                                              boot: BootFn, tmp_path: Path) -> None:
    # QEMU's own device tree (no key in it) passed with -dtb must not replace the embedded one.
    plain = tmp_path / "plain.dtb"
    subprocess.run([QEMU, "-M", f"{MACHINE[1]},dumpdtb={plain}", *MACHINE[2:], "-display", "none", "-nodefaults"],
                   check=True, capture_output=True)
    unsigned = _unsigned_fit(release_image, tmp_path / "unsigned.itb")
    disk.write_partition(board_disk, "fit_a", unsigned.read_bytes())
    g = boot(board_disk, extra=("-dtb", str(plain)))
    _refused_then_b(g, r"camera: slot A refused")


def test_flipped_rootfs_block_falls_back(release_image: dict[str, object], board_disk: Path,
                                         boot: BootFn) -> None:
    off, _ = disk.partitions(board_disk)["rootfs_a"]
    disk.flip_byte(board_disk, off + 8)  # squashfs superblock: read by the mount before hand-off
    g = boot(board_disk, deadline_s=200)
    g.wait_for(r"(data block \d+ is corrupted|verity.*corrupt)", 90)
    # Three attempts on A (U-Boot's counter), then slot B, whose attestation reports the fallback.
    m = g.wait_for(r"attestation (GREEN|YELLOW|RED) slot=B reasons=(\S+)\s", 180)
    assert m.group(1) == "YELLOW" and "boot.fallback" in m.group(2)
    assert g.output.count("camera: slot A attempt") == 3


def _edit_data_partition(board_disk: Path, tmp_path: Path, *debugfs_cmds: str) -> None:
    """Run debugfs write commands on the board's (ext4) data partition before it boots."""
    off, size = disk.partitions(board_disk)["data"]
    part = tmp_path / "data.img"
    mib = 1024 * 1024  # partitions are MiB-aligned; dd keeps the 512 MiB partition out of memory
    subprocess.run(["dd", f"if={board_disk}", f"of={part}", "bs=1M", f"skip={off // mib}", f"count={size // mib}",
                    "conv=sparse", "status=none"], check=True)
    for cmd in debugfs_cmds:
        subprocess.run(["debugfs", "-w", "-R", cmd, str(part)], check=True, capture_output=True)
    subprocess.run(["dd", f"if={part}", f"of={board_disk}", "bs=1M", f"seek={off // mib}", "conv=notrunc,sparse",
                    "status=none"], check=True)
    part.unlink()


def _put_data_file(board_disk: Path, tmp_path: Path, directory: str, name: str, content: bytes) -> None:
    """Write one file into the board's data partition before it boots."""
    src = tmp_path / name
    src.write_bytes(content)
    _edit_data_partition(board_disk, tmp_path, f"mkdir {directory}", f"write {src} {directory}/{name}")


def test_failed_boot_stage_halts_and_the_agent_never_listens(board_disk: Path, boot: BootFn,
                                                             tmp_path: Path) -> None:
    # Settings the firewall cannot be built from: `camera-bootverify boot` fails while the agent,
    # started beside it, waits at its gate (agent/bootgate.py). The gate must stay shut.
    _put_data_file(board_disk, tmp_path, "data", "settings.json", b"[]")
    g = boot(board_disk, deadline_s=240)
    g.wait_for(r"camera-init: agent started", 120)
    g.wait_for(r"settings.json is not an object", 120)
    g.wait_for(r"camera-init: boot stage failed, halting", 30)
    g.wait_exit(60)
    assert "HTTPS listening" not in g.output and "boot stage done" not in g.output


def _refused_by_the_initramfs(board_disk: Path, boot: BootFn, reason: str) -> None:
    """Both slots get one attempt; each initramfs must refuse for ``reason`` and never hand off."""
    disk.put_file(board_disk, "uboot.env",
                  ubootenv.build_env({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "1", "BOOT_B_LEFT": "1"}, flags=1))
    g = boot(board_disk, deadline_s=150)
    g.wait_for(reason, 90)
    g.wait_for(r"camera: no bootable slot", 90)
    g.wait_exit(30)
    assert "handing off" not in g.output


def test_rollback_refused(release_image: dict[str, object], board_disk: Path, boot: BootFn,
                          tmp_path: Path) -> None:
    # The device's anti-rollback counter is above this image's security version (1).
    _put_data_file(board_disk, tmp_path, "otp", "security-version", b"5\n")
    _refused_by_the_initramfs(board_disk, boot, r"rollback: image security version 1 < counter 5")


def test_swapped_anti_rollback_store_refused(board_disk: Path, boot: BootFn, tmp_path: Path) -> None:
    # /data/otp replaced by a symlink to a directory holding a lower counter (what an agent that
    # owns /data could try, were otp/ not a root-owned mount point): tampering, never counter 0.
    _edit_data_partition(board_disk, tmp_path, "mkdir data", "symlink otp data")
    _refused_by_the_initramfs(board_disk, boot, r"anti-rollback store is not a directory")
