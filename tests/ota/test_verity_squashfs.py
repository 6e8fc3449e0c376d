"""dm-verity trees against veritysetup, the verifying reader, and the squashfs reader against mksquashfs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bootverify.bundle.squashfs import SquashFs
from bootverify.bundle.verity import BLOCK_SIZE, VerifiedReader, build_tree, tree_size
from bootverify.errors import PayloadError, VerityError
from tests.conftest import need
from tests.ota.otakit import make_image


@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 300, 128 * 128 + 1])
def test_tree_matches_veritysetup(tmp_path: Path, blocks: int) -> None:
    need("veritysetup")
    data = os.urandom(blocks * BLOCK_SIZE)
    (tmp_path / "data").write_bytes(data)
    salt = os.urandom(32)
    res = subprocess.run(["veritysetup", "format", "--no-superblock", f"--salt={salt.hex()}",
                          str(tmp_path / "data"), str(tmp_path / "tree")], capture_output=True, text=True,
                         check=True, timeout=60)
    root = next(line.split()[-1] for line in res.stdout.splitlines() if line.startswith("Root hash"))
    tree = build_tree((data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)), salt)
    assert tree.root_hash.hex() == root
    assert len(tree.tree) == tree_size(blocks)
    assert (tmp_path / "tree").read_bytes()[: len(tree.tree)] == tree.tree


def _reader(buf: bytearray, blocks: int, root: bytes, salt: bytes) -> VerifiedReader:
    return VerifiedReader(lambda off, n: bytes(buf[off : off + n]), data_offset=0, data_size=blocks * BLOCK_SIZE,
                          tree_offset=blocks * BLOCK_SIZE, root_hash=root, salt=salt)


def test_reader_checks_every_block() -> None:
    blocks = 300
    data = os.urandom(blocks * BLOCK_SIZE)
    salt = os.urandom(32)
    tree = build_tree((data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)), salt)
    buf = bytearray(data + tree.tree)
    assert _reader(buf, blocks, tree.root_hash, salt).read(5000, 300_000) == data[5000:305_000]
    for victim in (0, 150 * BLOCK_SIZE + 17, len(data) - 1):
        bad = bytearray(buf)
        bad[victim] ^= 1
        with pytest.raises(VerityError):
            _reader(bad, blocks, tree.root_hash, salt).read(0, len(data))
    for victim in (len(data), len(data) + BLOCK_SIZE + 5, len(buf) - 1):  # hash blocks, every level
        bad = bytearray(buf)
        bad[victim] ^= 1
        with pytest.raises(VerityError):
            _reader(bad, blocks, tree.root_hash, salt).read(0, len(data))
    with pytest.raises(VerityError):
        _reader(buf, blocks, bytes(32), salt).read(0, 1)
    with pytest.raises(VerityError, match="shrank"):
        _reader(buf[: len(data) // 2], blocks, tree.root_hash, salt).read(0, len(data))


@pytest.mark.parametrize("victim_block", [0, 77, 127, 128, 200, 255])
def test_span_read_names_the_bad_block(victim_block: int) -> None:
    """``read_blocks_into`` compares a whole level-0 group of digests at once; a bad block anywhere
    in a 256-block span (first, middle, level-0 group edges, last) is still refused by its exact
    index, and only the blocks before it count as verified."""
    blocks = 300
    data = os.urandom(blocks * BLOCK_SIZE)
    salt = os.urandom(32)
    tree = build_tree((data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)), salt)
    buf = bytearray(data + tree.tree)
    good = _reader(buf, blocks, tree.root_hash, salt)
    span = memoryview(bytearray(256 * BLOCK_SIZE))
    good.read_blocks_into(10, span)
    assert bytes(span) == data[10 * BLOCK_SIZE : 266 * BLOCK_SIZE] and good.blocks_verified == 256
    buf[(10 + victim_block) * BLOCK_SIZE + 99] ^= 0x40
    bad = _reader(buf, blocks, tree.root_hash, salt)
    with pytest.raises(VerityError, match=rf"^payload block {10 + victim_block} does not match"):
        bad.read_blocks_into(10, span)
    assert bad.blocks_verified == victim_block


def test_reader_returns_only_bytes_it_checked() -> None:
    """A source that changes between reads (TOCTOU) is caught, never passed through."""
    blocks = 4
    data = os.urandom(blocks * BLOCK_SIZE)
    salt = os.urandom(32)
    tree = build_tree((data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)), salt)
    buf = bytearray(data + tree.tree)
    reads = []

    def pread(off: int, n: int) -> bytes:
        reads.append(off)
        if len(reads) > 2:
            buf[2 * BLOCK_SIZE] ^= 0xFF
        return bytes(buf[off : off + n])

    r = VerifiedReader(pread, data_offset=0, data_size=len(data), tree_offset=len(data), root_hash=tree.root_hash,
                       salt=salt)
    assert r.read(0, BLOCK_SIZE) == data[:BLOCK_SIZE]
    with pytest.raises(VerityError):
        r.read(BLOCK_SIZE, 3 * BLOCK_SIZE)


@pytest.mark.parametrize("args", [[], ["-comp", "xz"], ["-noD"], ["-no-fragments"], ["-b", "4096"]])
def test_squashfs_reader_matches_unsquashfs(tmp_path: Path, args: list[str]) -> None:
    need("mksquashfs")
    content = tmp_path / "c"
    content.mkdir()
    files = {"rootfs.img": make_image(content / "rootfs.img", 700_001, seed=9).read_bytes(),
             "manifest.raucm": b"[update]\ncompatible=x\n", "empty": b""}
    (content / "manifest.raucm").write_bytes(files["manifest.raucm"])
    (content / "empty").write_bytes(b"")
    for i in range(40):  # enough entries to span directory metadata blocks
        (content / f"f{i:03d}").write_bytes(os.urandom(i * 37))
    sq = tmp_path / "fs.sqfs"
    subprocess.run(["mksquashfs", str(content), str(sq), "-all-root", "-noappend", "-no-progress", "-no-xattrs",
                    *args], check=True, capture_output=True, timeout=60)
    raw = sq.read_bytes()
    fs = SquashFs(lambda off, n: raw[off : off + n], len(raw))
    for name, expected in files.items():
        assert b"".join(fs.iter_file(fs.lookup(name))) == expected
    assert b"".join(fs.iter_file(fs.lookup("f039"))) == (content / "f039").read_bytes()
    with pytest.raises(PayloadError):
        fs.lookup("missing")


def test_squashfs_unsupported_compressor_refused(tmp_path: Path) -> None:
    need("mksquashfs")
    content = tmp_path / "c"
    content.mkdir()
    (content / "rootfs.img").write_bytes(b"x" * 10000)
    sq = tmp_path / "fs.sqfs"
    subprocess.run(["mksquashfs", str(content), str(sq), "-noappend", "-no-progress", "-comp", "zstd"], check=True,
                   capture_output=True, timeout=60)
    raw = sq.read_bytes()
    fs = SquashFs(lambda off, n: raw[off : off + n], len(raw))
    with pytest.raises(PayloadError) as info:
        b"".join(fs.iter_file(fs.lookup("rootfs.img")))
    assert info.value.code == "bundle.squashfs_compressor"


@pytest.mark.parametrize("cut", [0, 10, 95, 200])
def test_squashfs_truncated(tmp_path: Path, cut: int) -> None:
    with pytest.raises(PayloadError):
        raw = b"hsqs" + bytes(cut)
        fs = SquashFs(lambda off, n: raw[off : off + n], len(raw))
        fs.lookup("rootfs.img")
