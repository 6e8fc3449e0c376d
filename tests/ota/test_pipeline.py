"""The install pipeline (agent/ota/pipeline.py) with spans much smaller than usual, so that
squashfs blocks straddle spans, verify workers take turns, buffers are recycled and writes are
batched across them many times: the bytes written must be the image, and after a bad block nothing
but a verified prefix."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent.ota import slots as slots_mod
from agent.ota.errors import OtaError
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


def _install(bundle: OpenedBundle, tmp: Path, **kw: int) -> tuple[Path, int]:
    entry = bundle.manifest.image("rootfs")
    slots = FileSlots(tmp)
    writer = slots.open_for_write("B", entry.size or 0)
    n = write_image(bundle, entry, writer, **kw)
    writer.finish()
    return slots.path("B"), n


@pytest.mark.parametrize(("span_blocks", "workers"), [(1, 1), (1, 2), (2, 2), (3, 1), (256, 1), (256, 2)])
def test_pipeline_writes_exactly_the_image(small_block_bundle: tuple[Path, bytes], keyring: Path, tmp_path: Path,
                                           span_blocks: int, workers: int) -> None:
    path, image = small_block_bundle
    bundle = _open(path.read_bytes(), keyring)
    threads = threading.active_count()
    out, n = _install(bundle, tmp_path, span_blocks=span_blocks, workers=workers)
    assert n == len(image) and out.read_bytes() == image
    assert threading.active_count() == threads  # the workers are joined
    # Every payload block holding the image's data went through the tree (sparse blocks have none).
    start, length = bundle.squashfs().data_extent(bundle.image_file(bundle.manifest.image("rootfs"))[1])
    assert bundle.reader.blocks_verified >= (start + length) // 4096 - start // 4096 >= 50


def test_pipeline_stops_at_a_bad_block_with_a_verified_prefix(small_block_bundle: tuple[Path, bytes],
                                                              keyring: Path, tmp_path: Path) -> None:
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
    slots = FileSlots(tmp_path)
    writer = slots.open_for_write("B", entry.size or 0)
    with pytest.raises(VerityError, match=f"payload block {(start + length * 3 // 4) // 4096} "):
        write_image(bad, entry, writer, span_blocks=1, workers=2)
    writer.abort()
    written = slots.path("B").read_bytes()
    assert 0 < len(written) < len(image)
    assert written == image[: len(written)]
    assert threading.active_count() == threads


def test_short_writev_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A block device or a signal may stop writev short; the writer must finish the job in order.
    real_writev = os.writev
    monkeypatch.setattr(slots_mod.os, "writev", lambda fd, chunks: real_writev(fd, [bytes(chunks[0])[:3]]))
    slots = FileSlots(tmp_path)
    data = os.urandom(3 * 4096 + 5)
    writer = slots.open_for_write("B", len(data))
    writer.writev([data[:7], memoryview(data)[7:4096], b"", memoryview(data)[4096:]])
    writer.finish()
    assert slots.path("B").read_bytes() == data


def test_slot_writer_refuses_more_than_the_image_size(tmp_path: Path) -> None:
    slots = FileSlots(tmp_path)
    writer = slots.open_for_write("B", 4096)
    writer.writev([bytes(4000)])
    with pytest.raises(OtaError) as info:
        writer.writev([bytes(50), bytes(50)])
    writer.abort()
    assert info.value.code == "ota.slot_too_small"
    assert slots.path("B").stat().st_size == 4000
