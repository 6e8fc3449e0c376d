"""The install pipeline (agent/ota/pipeline.py) with spans much smaller than usual, so that
squashfs blocks straddle spans, both verify workers take turns and buffers are recycled many times:
the bytes written must be the image, and after a bad block nothing but a verified prefix."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent.ota import slots as slots_mod
from agent.ota.pipeline import write_image
from agent.ota.slots import FileSlots
from bootverify.bundle.bundle import OpenedBundle, open_bundle
from bootverify.bundle.cms import Keyring
from bootverify.errors import VerityError
from bootverify.release.builder import build_bundle
from bootverify.release.pki import Pki
from tests.ota.otakit import now, signer_of

# Incompressible, sparse (zero) and compressible 4 KiB blocks, and a tail that ends in a fragment.
_KINDS = (lambda i: os.urandom(4096), lambda i: bytes(4096), lambda i: (b"camera %d " % i) * 400 + bytes(4096))


@pytest.fixture(scope="module")
def small_block_bundle(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> tuple[Path, bytes]:
    tmp = tmp_path_factory.mktemp("pipeline")
    image = b"".join(_KINDS[i % 3](i)[:4096] for i in range(150)) + os.urandom(1000)
    (tmp / "img").write_bytes(image)
    out = tmp / "b.raucb"
    build_bundle(out, images={"rootfs": tmp / "img"}, compatible="RC-1000", version="2.0.0", security_version=1,
                 signers=[signer_of(pki)], now=now(), mksquashfs_args=("-b", "4096"))
    return out, image


def _open(data: bytes, keyring: Path) -> OpenedBundle:
    return open_bundle(lambda off, n: data[off : off + n], len(data), Keyring.from_pem(keyring.read_bytes()), now())


def _install(bundle: OpenedBundle, tmp: Path, direct_io: bool = False, **kw: int) -> tuple[Path, int]:
    entry = bundle.manifest.image("rootfs")
    slots = FileSlots(tmp, direct_io=direct_io)
    writer = slots.open_for_write("B", entry.size or 0)
    n = write_image(bundle, entry, writer, **kw)
    writer.finish()
    return slots.path("B"), n


@pytest.fixture
def small_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    # The direct writer's staging buffer down to one page, so these small images cross it many
    # times and end in a partial page (the real one is 4 MiB).
    monkeypatch.setattr(slots_mod._DirectWriter, "STAGE", 4096)


@pytest.mark.parametrize(("span_blocks", "workers", "direct_io"),
                         [(1, 1, True), (1, 2, True), (2, 2, True), (3, 2, False), (256, 2, True), (256, 2, False)])
def test_pipeline_writes_exactly_the_image(small_block_bundle: tuple[Path, bytes], keyring: Path, tmp_path: Path,
                                           span_blocks: int, workers: int, direct_io: bool, small_stage: None) -> None:
    path, image = small_block_bundle
    bundle = _open(path.read_bytes(), keyring)
    threads = threading.active_count()
    out, n = _install(bundle, tmp_path, direct_io, span_blocks=span_blocks, workers=workers)
    assert n == len(image) and out.read_bytes() == image
    assert threading.active_count() == threads  # the workers are joined
    # Every payload block holding the image's data went through the tree (sparse blocks have none).
    start, length = bundle.squashfs().data_extent(bundle.image_file(bundle.manifest.image("rootfs"))[1])
    assert bundle.reader.blocks_verified >= (start + length) // 4096 - start // 4096 >= 50


def test_pipeline_stops_at_a_bad_block_with_a_verified_prefix(small_block_bundle: tuple[Path, bytes],
                                                              keyring: Path, tmp_path: Path,
                                                              small_stage: None) -> None:
    path, image = small_block_bundle
    data = bytearray(path.read_bytes())
    good = _open(bytes(data), keyring)
    # A byte well inside the image's data blocks (the last 4 KiB block may also hold squashfs
    # metadata, which is read before any write): many spans verify and are written before it.
    start, length = good.squashfs().data_extent(good.image_file(good.manifest.image("rootfs"))[1])
    data[start + length * 3 // 4] ^= 1
    bad = _open(bytes(data), keyring)
    threads = threading.active_count()
    entry = bad.manifest.image("rootfs")
    slots = FileSlots(tmp_path, direct_io=True)
    writer = slots.open_for_write("B", entry.size or 0)
    with pytest.raises(VerityError):
        write_image(bad, entry, writer, span_blocks=1, workers=2)
    writer.abort()
    written = slots.path("B").read_bytes()
    assert 0 < len(written) < len(image)
    assert written == image[: len(written)]
    assert threading.active_count() == threads


def test_slot_writes_bypass_the_page_cache_where_possible(tmp_path: Path) -> None:
    # ext4 (the test's tmp dir) takes O_DIRECT; an odd length ends in the buffered tail.
    slots = FileSlots(tmp_path, direct_io=True)
    writer = slots.open_for_write("B", 3 * 4096 + 5)
    assert isinstance(writer, slots_mod._DirectWriter)
    data = os.urandom(3 * 4096 + 5)
    writer.write(data[:7])
    writer.write(memoryview(data)[7:])
    writer.finish()
    assert slots.path("B").read_bytes() == data
