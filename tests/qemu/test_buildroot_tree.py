"""The Buildroot tree describes the same rootfs configuration as the QEMU image: its post-build
script, run on a target directory as Buildroot would, leaves the agent configuration that
qemu/build_image.py bakes in (firmware version included) and the same camera-init inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from qemu.board import MACHINE
from qemu.build_image import ACCOUNTS, Builder

ROOT = Path(__file__).resolve().parents[2]


def test_post_build_matches_the_qemu_image(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (target / "etc/camera").mkdir(parents=True)
    (target / "usr/lib").mkdir(parents=True)
    # What the camera-services package installs before post-build runs.
    shutil.copy2(ROOT / "board/rootfs/agent.json", target / "etc/camera/agent.json")
    host = tmp_path / "host"
    (host / "bin").mkdir(parents=True)
    (host / "bin/python3").symlink_to(sys.executable)
    env = {**os.environ, "HOST_DIR": str(host), "CAMERA_FIRMWARE_VERSION": "2.3.4", "CAMERA_PROFILE": "release"}
    subprocess.run(["sh", ROOT / "buildroot/board/post-build.sh", target], env=env, check=True, timeout=60)
    expected = json.loads(Builder(tmp_path / "build", "release", "2.3.4", 1).agent_config())
    assert json.loads((target / "etc/camera/agent.json").read_text()) == expected
    assert expected["device"]["firmware_version"] == "2.3.4"
    assert (target / "etc/camera/profile").read_text() == "release\n"
    assert (target / "etc/camera/modules").read_text() == ""
    assert 'VERSION_ID="2.3.4"' in (target / "etc/os-release").read_text()
    for rel, text in ACCOUNTS.items():
        assert (target / rel).read_text() == text, rel
    assert (target / "etc/shadow").stat().st_mode & 0o777 == 0o600


def test_post_image_dumps_the_control_dtb_of_the_same_machine() -> None:
    # The kernel gets U-Boot's control DTB; dumped for another machine or CPU it crashes early.
    line = next(ln for ln in (ROOT / "buildroot/board/post-image.sh").read_text().splitlines()
                if ln.startswith("qemu-system-aarch64 "))
    argv = line.split()
    assert argv[argv.index("-M") + 1] == f'{MACHINE[1]},dumpdtb="$B/board.dtb"'
    rest = argv[argv.index("-M") + 2 :]
    assert rest[: len(MACHINE) - 2] == list(MACHINE[2:])
