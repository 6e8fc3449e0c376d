"""The bench-only twin of the release image with the verification taken out.

Same kernel, same initramfs script apart from dm-verity, same rootfs and disk; but booted by
Debian's stock U-Boot (``u-boot-qemu``: no required key, no FIT_FULL_CHECK) from a FIT without
hash or signature nodes, and with the squashfs mounted directly instead of through dm-verity.
Built only here, into build/bench-noverify/, so the boot benchmark can put the cost of the
verification next to the verified boot. Never part of a release image.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from qemu import disk

ROOT = Path(__file__).resolve().parents[2]
STOCK_UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
FIT_ADDR = "0x48000000"
# GPT partition numbers of slot A (board/uboot/env.txt: FIT on 2, rootfs on 4).
FIT_A_PART = 2

_ITS = """/dts-v1/;
/ {
    description = "camera firmware slot image (bench: unverified)";
    #address-cells = <1>;
    images {
        kernel {
            data = /incbin/("KERNEL");
            type = "kernel"; arch = "arm64"; os = "linux"; compression = "gzip";
            load = <0x40400000>; entry = <0x40400000>;
        };
        initramfs {
            data = /incbin/("INITRD");
            type = "ramdisk"; arch = "arm64"; os = "linux"; compression = "none";
        };
    };
    configurations {
        default = "conf";
        conf { kernel = "kernel"; ramdisk = "initramfs"; };
    };
};
"""


def unverified_init(init: str) -> str:
    """The initramfs script with ``veritysetup open`` removed and the squashfs mounted directly."""
    out, n = re.subn(r"veritysetup open .*?\|\| refuse \"dm-verity open failed\"\n", "", init, flags=re.S)
    if n != 1:
        raise RuntimeError("initramfs init: veritysetup block not found (board/initramfs/init changed?)")
    out, n = re.subn(r"/dev/mapper/camera-root /root", '"$root_dev" /root', out)
    if n != 1:
        raise RuntimeError("initramfs init: verity mount not found (board/initramfs/init changed?)")
    return out


def build(manifest: dict[str, object], build_dir: Path) -> tuple[Path, Path]:
    """(stock u-boot.bin, disk image) of the unverified twin of ``manifest``'s image."""
    if not STOCK_UBOOT.exists():
        raise SystemExit(f"{STOCK_UBOOT} missing: apt-get install u-boot-qemu (deps/apt-boottime.txt)")
    image_dir = Path(str(manifest["disk"])).parent
    out = build_dir / "bench-noverify"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tree = Path(tmp) / "initramfs"
        tree.mkdir()
        raw = (image_dir / "initramfs.cpio").read_bytes()
        subprocess.run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], input=raw, cwd=tree, check=True)
        init = tree / "init"
        init.write_text(unverified_init(init.read_text()))
        listing = subprocess.run(["find", ".", "-mindepth", "1"], cwd=tree, capture_output=True, text=True,
                                 check=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--reproducible", "-R", "0:0", "--quiet"],
                              input="\n".join(sorted(listing.split())).encode() + b"\n", cwd=tree,
                              capture_output=True, check=True).stdout
        (Path(tmp) / "initramfs.cpio").write_bytes(cpio)
        initrd = out / "initramfs.cpio.lz4"
        subprocess.run(["lz4", "-l", "-9", "-q", str(Path(tmp) / "initramfs.cpio"), str(initrd)], check=True)
        kernel = Path(tmp) / "Image.gz"
        stage_kernel = build_dir / "stage-boot" / "boot" / f"vmlinuz-{manifest['kernel']}"
        # Same compression as board/sign-fit.sh, so U-Boot's gunzip is on both sides of the comparison.
        kernel.write_bytes(gzip.compress(stage_kernel.read_bytes(), 9, mtime=0))
        its = Path(tmp) / "image.its"
        its.write_text(_ITS.replace("KERNEL", str(kernel)).replace("INITRD", str(initrd)))
        fit = out / "unsigned.itb"
        subprocess.run(["mkimage", "-q", "-f", str(its), str(fit)], check=True)
    img = disk.clone(Path(str(manifest["disk"])), out / "disk.img")
    disk.write_partition(img, "fit_a", fit.read_bytes())
    return STOCK_UBOOT, img


def boot_command() -> str:
    """What the hardened env's camera_try does for slot A, minus the checks, typed at the prompt."""
    env = (ROOT / "board/uboot/env.txt").read_text()
    m = re.search(r"^console_args=(.*)$", env, re.M)
    if m is None:
        raise RuntimeError("console_args missing from board/uboot/env.txt")
    return (
        f"virtio scan; part start virtio 0 {FIT_A_PART} fstart; part size virtio 0 {FIT_A_PART} fsize; "
        f"virtio read {FIT_ADDR} ${{fstart}} ${{fsize}}; "
        f'setenv bootargs "{m.group(1)} camera.slot=A"; '
        f"bootm {FIT_ADDR}#conf {FIT_ADDR}#conf ${{fdtcontroladdr}}\n"
    )
