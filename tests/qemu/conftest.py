"""Shared fixtures for the board tests: the image is built once per session and shared."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qemu import build_image, disk  # noqa: E402
from qemu.board import BoardRun  # noqa: E402
from qemu.vm import Guest  # noqa: E402

BUILD = ROOT / "build"


def _need_tools() -> None:
    if not disk.have_tools() or (not (BUILD / "uboot").exists() and shutil.which("aarch64-linux-gnu-gcc") is None):
        pytest.skip("board tools missing: run `sh qemu/prepare-apt.sh` (make image does)")


@pytest.fixture(scope="session")
def release_image() -> dict[str, object]:
    _need_tools()
    # Incremental: returns at once when `make image` already built it.
    manifest = build_image.Builder(BUILD, "release", "1.0.0", 1).build_all()
    return json.loads(json.dumps(manifest))


@pytest.fixture
def board_disk(release_image: dict[str, object], tmp_path: Path) -> Path:
    return disk.clone(Path(str(release_image["disk"])), tmp_path / "disk.img")


@pytest.fixture
def boot(release_image: dict[str, object], tmp_path: Path) -> Iterator[object]:
    guests: list[Guest] = []

    def start(disk_path: Path, *, extra: tuple[str, ...] = (), deadline_s: float = 240.0,
              forwards: tuple[object, ...] = ()) -> Guest:
        g = Guest(BoardRun(bios=Path(str(release_image["bios"])), disk=disk_path, extra=extra,
                           forwards=forwards),  # type: ignore[arg-type]
                  tmp_path / f"console-{len(guests)}.log", deadline_s=deadline_s)
        guests.append(g)
        return g.start()

    yield start
    for g in guests:
        g.kill()
