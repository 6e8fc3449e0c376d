"""The install pipeline (agent/ota/pipeline.py) with spans much smaller than usual, so that
squashfs blocks straddle spans, spans alternate between hashing worker processes and this
process, buffers are recycled and writes are batched across them many times: the bytes written
must be the image, after a bad block nothing but a verified prefix, and every worker is gone
when the pipeline returns, whatever happened."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.ota import pipeline
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


@pytest.fixture
def workers_seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every hashing worker the pipeline starts; afterwards each must have exited (reaped)."""
    seen: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def popen(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = real(*args, **kw)
        seen.append(proc)
        return proc

    monkeypatch.setattr(pipeline.subprocess, "Popen", popen)
    yield seen
    assert all(p.returncode is not None for p in seen)


def _open(path: Path, keyring: Path) -> tuple[OpenedBundle, int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    bundle = open_bundle(lambda off, n: os.pread(fd, n, off), os.fstat(fd).st_size,
                         Keyring.from_pem(keyring.read_bytes()), now(),
                         pread_into=lambda buf, off: os.preadv(fd, [buf], off))
    return bundle, fd


def _extent(bundle: OpenedBundle) -> tuple[int, int]:
    return bundle.squashfs().data_extent(bundle.image_file(bundle.manifest.image("rootfs"))[1])


@pytest.mark.parametrize(("span_blocks", "workers", "self_head", "self_every"), [
    (1, 0, 0, 0),  # no worker: this process does it all
    (1, 1, 0, 0),  # every span through the worker
    (1, 1, 2, 3),  # shared, span by span
    (2, 2, 0, 0),  # two workers taking turns
    (3, 2, 1, 2),
    (256, 1, 8, 4),  # the defaults: one span holds the whole payload, the worker is not needed
    (256, 2, 0, 0),
])
def test_pipeline_writes_exactly_the_image(small_block_bundle: tuple[Path, bytes], keyring: Path, tmp_path: Path,
                                           workers_seen: list[subprocess.Popen[bytes]], span_blocks: int,
                                           workers: int, self_head: int, self_every: int) -> None:
    path, image = small_block_bundle
    bundle, fd = _open(path, keyring)
    entry = bundle.manifest.image("rootfs")
    slots = FileSlots(tmp_path)
    writer = slots.open_for_write("B", entry.size or 0)
    threads = threading.active_count()
    try:
        n = write_image(bundle, entry, writer, bundle_fd=fd, span_blocks=span_blocks, workers=workers,
                        self_head=self_head, self_every=self_every)
        start, length = _extent(bundle)
    finally:
        os.close(fd)
    writer.finish()
    assert n == len(image) and slots.path("B").read_bytes() == image
    assert threading.active_count() == threads
    spans = -(-(start + length) // (4096 * span_blocks)) - start // (4096 * span_blocks)
    if workers and spans > self_head:
        assert 1 <= len(workers_seen) <= workers
    assert all(p.returncode == 0 for p in workers_seen)
    # Every payload block holding the image's data went through the tree (sparse blocks have none).
    assert bundle.reader.blocks_verified >= (start + length) // 4096 - start // 4096 >= 50


@pytest.mark.parametrize("whose", ["worker", "own"])
def test_pipeline_stops_at_a_bad_block_with_a_verified_prefix(small_block_bundle: tuple[Path, bytes],
                                                              keyring: Path, tmp_path: Path, whose: str,
                                                              workers_seen: list[subprocess.Popen[bytes]]) -> None:
    path, image = small_block_bundle
    good, fd = _open(path, keyring)
    # A byte well inside the image's data blocks (the last 4 KiB block may also hold squashfs
    # metadata, which is read before any write): many spans verify and are written before it.
    start, length = _extent(good)
    os.close(fd)
    victim = (start + length * 3 // 4) // 4096
    # Span = block; this process verifies the first span and the odd ones after it, worker 0 the
    # even ones: put the bad block in a span of the side under test.
    if ((victim - start // 4096) % 2 == 0) != (whose == "worker"):
        victim += 1
    data = bytearray(path.read_bytes())
    data[victim * 4096 + 100] ^= 1
    (tmp_path / "bad.raucb").write_bytes(data)
    bad, fd = _open(tmp_path / "bad.raucb", keyring)
    entry = bad.manifest.image("rootfs")
    slots = FileSlots(tmp_path)
    writer = slots.open_for_write("B", entry.size or 0)
    with pytest.raises(VerityError, match=f"payload block {victim} "):
        write_image(bad, entry, writer, bundle_fd=fd, span_blocks=1, workers=1, self_head=1, self_every=2)
    os.close(fd)
    writer.abort()
    written = slots.path("B").read_bytes()
    assert 0 < len(written) < len(image)
    assert written == image[: len(written)]
    assert len(workers_seen) == 1 and workers_seen[0].returncode == 0


def test_a_worker_that_dies_fails_the_write(small_block_bundle: tuple[Path, bytes], keyring: Path, tmp_path: Path,
                                            workers_seen: list[subprocess.Popen[bytes]]) -> None:
    """A killed worker is an I/O error (the installer reports ota.write_failed), never a silent
    gap: what was written is still a verified prefix."""
    path, image = small_block_bundle
    bundle, fd = _open(path, keyring)
    entry = bundle.manifest.image("rootfs")
    slots = FileSlots(tmp_path)
    inner = slots.open_for_write("B", entry.size or 0)

    class KillOnFirstWrite:
        def writev(self, chunks: list[bytes | memoryview]) -> None:
            if workers_seen and workers_seen[0].poll() is None:
                workers_seen[0].send_signal(signal.SIGKILL)
                workers_seen[0].wait()
            inner.writev(chunks)

        def finish(self) -> None:
            inner.finish()

        def abort(self) -> None:
            inner.abort()

    with pytest.raises(OSError, match="hashing worker exited"):
        write_image(bundle, entry, KillOnFirstWrite(), bundle_fd=fd, span_blocks=1, workers=1, self_head=0,
                    self_every=0)
    os.close(fd)
    inner.abort()
    written = slots.path("B").read_bytes()
    assert 0 < len(written) < len(image) and written == image[: len(written)]


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


def test_without_a_worker_process_the_installer_verifies_everything(
        small_block_bundle: tuple[Path, bytes], keyring: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A device at its process limit still installs (slower): spawning the worker failing is not
    an install failure."""
    def no_fork(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(pipeline.subprocess, "Popen", no_fork)
    path, image = small_block_bundle
    bundle, fd = _open(path, keyring)
    entry = bundle.manifest.image("rootfs")
    slots = FileSlots(tmp_path)
    writer = slots.open_for_write("B", entry.size or 0)
    try:
        n = write_image(bundle, entry, writer, bundle_fd=fd, span_blocks=1, workers=1, self_head=0, self_every=0)
    finally:
        os.close(fd)
    writer.finish()
    assert n == len(image) and slots.path("B").read_bytes() == image
    assert "no hashing worker" in caplog.text
