"""KASLR (ER-01 2.1): the kernel lands at a different address on every boot.

U-Boot's control DTB is dumped from QEMU once at build time, so without board/uboot/env.txt's
camera_seed every boot would hand the kernel the same /chosen/kaslr-seed. Two boots of the same
dev image (root shell on the console; root may read real addresses with kptr_restrict=1) must
show different kernel text addresses.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qemu import disk
from qemu.board import BoardRun
from qemu.vm import Guest
from tests.qemu.test_board_dev import dev_image, sh  # noqa: F401 - dev_image is a fixture

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def _kernel_text(image: dict[str, object], tmp: Path, idx: int) -> tuple[int, str]:
    d = disk.clone(Path(str(image["disk"])), tmp / f"kaslr-{idx}.img")
    with Guest(BoardRun(bios=Path(str(image["bios"])), disk=d), tmp / f"kaslr-{idx}.log", deadline_s=300) as g:
        g.wait_for(r"DEV PROFILE - console shell enabled", 240)
        out = sh(g, "grep -m1 ' T _stext$' /proc/kallsyms", f"K{idx}")
        console = g.output
    m = re.search(r"^([0-9a-f]{16}) T _stext", out, re.M)
    assert m, out
    return int(m.group(1), 16), console + out


def test_kernel_text_moves_between_boots(dev_image: dict[str, object], tmp_path: Path) -> None:  # noqa: F811
    a, log_a = _kernel_text(dev_image, tmp_path, 0)
    b, log_b = _kernel_text(dev_image, tmp_path, 1)
    # U-Boot found the RNG and wrote the seed (without it the slot is refused, not booted).
    for log in (log_a, log_b):
        assert "No RNG device" not in log and "Reading RNG failed" not in log
    assert a != 0 and b != 0
    assert a != b, f"kernel text at {a:#x} on both boots: KASLR seed not fresh"


def test_no_rng_no_boot(release_image: dict[str, object], board_disk: Path, tmp_path: Path) -> None:
    """Without an entropy source U-Boot refuses each slot instead of booting with a known seed."""
    run = BoardRun(bios=Path(str(release_image["bios"])), disk=board_disk, rng=False)
    with Guest(run, tmp_path / "no-rng.log", deadline_s=240) as g:
        g.wait_for(r"camera: no bootable slot", 200)
        assert "No RNG device" in g.output and "Starting kernel" not in g.output
