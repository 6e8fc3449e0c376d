"""Edit a board disk image offline: partition offsets, byte flips, the U-Boot env file (tests)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

SECTOR = 512


def partitions(disk: Path) -> dict[str, tuple[int, int]]:
    """GPT partition name -> (byte offset, byte size)."""
    out = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout
    table = json.loads(out)["partitiontable"]
    return {p["name"]: (p["start"] * SECTOR, p["size"] * SECTOR) for p in table["partitions"]}


def clone(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)], check=True)
    return dst


def read_at(disk: Path, offset: int, length: int) -> bytes:
    with open(disk, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def write_at(disk: Path, offset: int, data: bytes) -> None:
    with open(disk, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def flip_byte(disk: Path, offset: int, mask: int = 0x01) -> None:
    b = read_at(disk, offset, 1)
    write_at(disk, offset, bytes([b[0] ^ mask]))


def write_partition(disk: Path, name: str, data: bytes) -> None:
    off, size = partitions(disk)[name]
    if len(data) > size:
        raise ValueError(f"{len(data)} bytes do not fit partition {name}")
    write_at(disk, off, data)


def put_file(disk: Path, name: str, data: bytes, partition: str = "env") -> None:
    """Write a file into the FAT env partition (mtools, no loop mount needed)."""
    off, _ = partitions(disk)[partition]
    with tempfile.NamedTemporaryFile() as tmp:
        tmp.write(data)
        tmp.flush()
        subprocess.run(["mcopy", "-o", "-i", f"{disk}@@{off}", tmp.name, f"::{name}"], check=True,
                       env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})


def get_file(disk: Path, name: str, partition: str = "env") -> bytes | None:
    off, _ = partitions(disk)[partition]
    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / "f"
        proc = subprocess.run(["mcopy", "-i", f"{disk}@@{off}", f"::{name}", str(dst)], capture_output=True,
                              env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}, check=False)
        return dst.read_bytes() if proc.returncode == 0 else None


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("sfdisk", "mcopy", "qemu-system-aarch64", "mkimage"))
