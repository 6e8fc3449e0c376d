"""The install write path: bundle -> verified bytes -> slot, on two cores, memory bounded.

The image's data blocks are read from the bundle in 1 MiB spans into shared buffers. A hashing
worker process (agent/ota/hasher.py) computes the verity digest of every 4 KiB block of most
spans; this process hashes the rest itself (``read_blocks_into``), compares all digests with the
verified hash tree (``VerifiedReader.verify_digests``), cuts squashfs blocks out of verified
spans (memoryviews, no copy), decompresses where needed and writes a span's blocks to the slot
with ONE ``writev``.

Why a process: SHA-256 of every payload block is most of an install's CPU, and a hashing thread
drops and retakes the GIL for every 4 KiB block; measured, a second hashing thread added CPU
without a faster install, a process does not share the GIL. Why this process hashes a share too
(the first spans, while the worker starts, then one span in ``SELF_EVERY``): one worker plus that
share used both cores best; two workers (three busy processes on two cores) were slower
(docs/ota.md section 8). Why one ``writev`` per span: a write per squashfs block cost ~15 % more
CPU.

TOCTOU: a span's buffer is written only by whoever holds its request (the worker, before it
replies, or this process), the span is used only after all its digests matched, and the buffer
is handed out again only after the writes from it are done, so the bytes written are the bytes
checked. A span that fails never reaches the writer. Memory: ``BUFFERS`` x ``SPAN`` shared, plus
the reader's hash-block cache, whatever the image size. No second whole-image hash: the verity
tree already authenticates every payload byte the image is decoded from (docs/ota.md, "Why no
second image hash"). Without a bundle descriptor, or with ``workers=0``, this process does it
all, one span at a time.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import mmap
import os
import subprocess
import sys
from collections.abc import Callable

from agent.ota import hasher
from agent.ota.slots import SlotWriter
from bootverify.bundle.bundle import OpenedBundle
from bootverify.bundle.manifest import ImageEntry
from bootverify.bundle.verity import BLOCK_SIZE, DIGEST_SIZE, VerifiedReader
from bootverify.errors import PayloadError, VerityError

SPAN_BLOCKS = 256  # 1 MiB: two level-0 hash blocks' worth, large enough to amortise each read
WORKERS = 1 if (os.cpu_count() or 1) > 1 else 0  # hashing processes
SELF_EVERY = 4  # then this process verifies every 4th span itself ...
SELF_HEAD = 8  # ... and the first spans, while the worker process starts (~20 ms on the host)
# Span buffers in all: the consumer holds at most two consecutive spans, the rest are in flight.
BUFFERS = 6
BATCH_CHUNKS = 512  # squashfs blocks per writev, below IOV_MAX (1024)
WORKER_EXIT_TIMEOUT = 10.0  # a worker finishes its current span (milliseconds) and sees EOF
log = logging.getLogger(__name__)


class _HashWorkers:
    """Hashing worker processes and the shared memory they read spans into (agent/ota/hasher.py)."""

    def __init__(self, bundle_fd: int, salt: bytes, workers: int, buffers: int, span: int) -> None:
        self._span = span
        self._digest_base, size = hasher.layout(buffers, span)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._requests: list[int] = []
        self._replies: list[int] = []
        memfd = os.memfd_create("ota-spans", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, size)
            self._shm = mmap.mmap(memfd, size)
            self.mem = memoryview(self._shm)
            for _ in range(workers):
                self._spawn(bundle_fd, memfd, buffers, span, salt)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(memfd)  # the mappings keep the memory

    def _spawn(self, bundle_fd: int, memfd: int, buffers: int, span: int, salt: bytes) -> None:
        req_r, req_w = os.pipe()
        self._requests.append(req_w)
        rep_r, rep_w = os.pipe()
        self._replies.append(rep_r)
        try:
            # -I -S: the standard library only; nothing from the environment or site-packages.
            argv = [sys.executable, "-I", "-S", hasher.__file__,
                    *map(str, (bundle_fd, memfd, req_r, rep_w, buffers, span)), salt.hex()]
            self._procs.append(subprocess.Popen(argv, pass_fds=(bundle_fd, memfd, req_r, rep_w),
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        finally:
            os.close(req_r)
            os.close(rep_w)

    def submit(self, worker: int, index: int, offset: int, length: int) -> None:
        try:
            os.write(self._requests[worker], hasher.REQUEST.pack(index, offset, length))
        except BrokenPipeError as exc:
            raise self._exited(worker) from exc

    def _exited(self, worker: int) -> OSError:
        return OSError(errno.EPIPE, f"hashing worker exited ({self._procs[worker].poll()})")

    def reply(self, worker: int) -> tuple[int, int]:
        """(buffer index, bytes read or -errno) of the worker's oldest request."""
        data = hasher.read_exact(self._replies[worker], hasher.REPLY.size)
        if not data:
            raise self._exited(worker)
        index, got = hasher.REPLY.unpack(data)
        return index, got

    def data(self, index: int) -> memoryview:
        return self.mem[index * self._span : (index + 1) * self._span]

    def digests(self, index: int, blocks: int) -> bytes:
        base = self._digest_base + index * (self._span // BLOCK_SIZE) * DIGEST_SIZE
        return bytes(self.mem[base : base + blocks * DIGEST_SIZE])

    def close(self) -> None:
        for fd in self._requests:
            os.close(fd)  # EOF: each worker exits after its current span
        self._requests = []
        for proc in self._procs:
            try:
                proc.wait(WORKER_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for fd in self._replies:
            os.close(fd)
        self._replies = []
        if hasattr(self, "mem"):
            self.mem.release()
            try:
                self._shm.close()
            except BufferError:  # a caller still holds a view (an error path); unmapped with it
                pass


class _VerifiedSpans:
    """Payload bytes ``[start, end)`` in forward order, each span verified before it is handed out.

    Spans (aligned to ``span_blocks``) get a buffer in order as buffers come free; a worker's
    spans are sent to it then, and the consumer takes them, and verifies its own, in span order.
    No deadlock: the consumer holds at most two consecutive spans (a squashfs block is at most one
    span long) and gives back every span it has passed (after ``before_reuse``, which writes out
    the views into it) before it waits for the next one, and there are more than two buffers."""

    def __init__(self, reader: VerifiedReader, start: int, end: int, span_blocks: int = SPAN_BLOCKS,
                 workers: int = WORKERS, buffers: int = BUFFERS,
                 before_reuse: Callable[[], None] = lambda: None, bundle_fd: int | None = None,
                 self_head: int = SELF_HEAD, self_every: int = SELF_EVERY) -> None:
        self._reader = reader
        self._before_reuse = before_reuse
        first, last = start // BLOCK_SIZE, -(-end // BLOCK_SIZE)
        bounds = [first, *range((first // span_blocks + 1) * span_blocks, last, span_blocks), last]
        self._spans = list(itertools.pairwise(bounds))
        buffers = max(3, buffers)
        span = span_blocks * BLOCK_SIZE
        # Who verifies span i: a worker (its index) or this process (-1).
        self._assign = [-1] * len(self._spans)
        if bundle_fd is not None and workers > 0:
            mine = [i < self_head or (self_every > 0 and i % self_every == self_every - 1)
                    for i in range(len(self._spans))]
            theirs = [i for i, m in enumerate(mine) if not m]
            for n, i in enumerate(theirs):
                self._assign[i] = n % workers
            workers = min(workers, len(theirs))
        else:
            workers = 0
        self._pool = None
        if bundle_fd is not None and workers:
            try:
                self._pool = _HashWorkers(bundle_fd, reader.salt, workers, buffers, span)
            except OSError as exc:
                # No worker (a process limit, no memfd): slower, not wrong.
                log.warning("no hashing worker (%s): the installer verifies every span itself", exc)
                self._assign = [-1] * len(self._spans)
        self._local = [] if self._pool else [memoryview(bytearray(span)) for _ in range(buffers)]
        self._free = collections.deque(range(buffers))
        self._in_flight: collections.deque[int] = collections.deque()
        self._submitted = 0
        self._next_span = 0
        self._held: collections.deque[tuple[int, int, int]] = collections.deque()  # (byte, size, buffer)
        self._submit()

    def _buffer(self, index: int) -> memoryview:
        return self._pool.data(index) if self._pool else self._local[index]

    def _submit(self) -> None:
        if self._pool is None:
            return
        while self._free and self._submitted < len(self._spans):
            index = self._free.popleft()
            first, last = self._spans[self._submitted]
            worker = self._assign[self._submitted]
            if worker >= 0:
                self._pool.submit(worker, index, self._reader.data_offset + first * BLOCK_SIZE,
                                  (last - first) * BLOCK_SIZE)
            self._in_flight.append(index)  # this process's own spans keep their buffer in order too
            self._submitted += 1

    def _next(self) -> None:
        if self._next_span >= len(self._spans):
            raise PayloadError("read beyond the image's data blocks", code="bundle.squashfs")
        first, last = self._spans[self._next_span]
        length = (last - first) * BLOCK_SIZE
        worker = self._assign[self._next_span]
        if self._pool is None:
            index = self._free.popleft()
            self._reader.read_blocks_into(first, self._local[index][:length])
        elif worker < 0:
            index = self._in_flight.popleft()
            self._reader.read_blocks_into(first, self._pool.data(index)[:length])
        else:
            index, got = self._pool.reply(worker)
            if index != self._in_flight.popleft():
                raise OSError(errno.EPROTO, "hashing worker answered out of order")
            if got < 0:
                raise OSError(-got, os.strerror(-got))
            if got != length:
                raise VerityError("bundle shrank while it was read", code="bundle.truncated_during_read")
            self._reader.verify_digests(first, self._pool.digests(index, last - first))
        self._held.append((first * BLOCK_SIZE, length, index))
        self._next_span += 1

    def get(self, offset: int, length: int) -> bytes | memoryview:
        """Verified bytes; valid until ``before_reuse`` is called (their buffer is reused after)."""
        end = offset + length
        if self._held and self._held[0][0] + self._held[0][1] <= offset:
            self._before_reuse()
        while self._held and self._held[0][0] + self._held[0][1] <= offset:
            self._free.append(self._held.popleft()[2])
        self._submit()
        while not self._held or self._held[-1][0] + self._held[-1][1] < end:
            self._next()
        first, size, index = self._held[0]
        if first <= offset and end <= first + size:
            return self._buffer(index)[offset - first : end - first]
        # A block across two spans: one small copy (at most one block per span).
        parts = []
        for first, size, index in self._held:
            lo, hi = max(offset, first), min(end, first + size)
            if lo < hi:
                parts.append(self._buffer(index)[lo - first : hi - first])
        return b"".join(parts)

    def close(self) -> None:
        self._held.clear()
        if self._pool is not None:
            self._pool.close()


class _Batch:
    """Squashfs blocks gathered for one ``writev``: views into held spans, decompressed blocks,
    the shared zero block. Flushed before a span buffer is reused and when ``max_bytes`` or
    ``max_chunks`` is reached, so memory stays bounded (one span of decompressed data)."""

    def __init__(self, writer: SlotWriter, max_bytes: int, max_chunks: int = BATCH_CHUNKS) -> None:
        self._writer = writer
        self._max_bytes = max_bytes
        self._max_chunks = max_chunks
        self._chunks: list[bytes | memoryview] = []
        self._bytes = 0
        self.written = 0

    def add(self, chunk: bytes | memoryview) -> None:
        self._chunks.append(chunk)
        self._bytes += len(chunk)
        if self._bytes >= self._max_bytes or len(self._chunks) >= self._max_chunks:
            self.flush()

    def flush(self) -> None:
        if self._chunks:
            self._writer.writev(self._chunks)
            self.written += self._bytes
            self._chunks = []
            self._bytes = 0


def write_image(bundle: OpenedBundle, entry: ImageEntry, writer: SlotWriter, *, bundle_fd: int | None = None,
                span_blocks: int = SPAN_BLOCKS, workers: int = WORKERS, self_head: int = SELF_HEAD,
                self_every: int = SELF_EVERY) -> int:
    """Stream the verified image ``entry`` into ``writer``; returns the bytes written. Raises
    ``BootVerifyError`` for anything that fails verification, ``OSError`` for I/O.

    ``bundle_fd``, the open bundle the ``bundle`` reads from, lets ``workers`` hashing processes
    read spans themselves; this process verifies the first ``self_head`` spans and every
    ``self_every``-th (0: none) itself. Without ``bundle_fd`` it verifies them all."""
    fs, inode = bundle.image_file(entry)
    start, length = fs.data_extent(inode)
    # The no-deadlock argument needs every squashfs block to fit in one span.
    span_blocks = max(span_blocks, fs.sb.block_size // BLOCK_SIZE)
    batch = _Batch(writer, span_blocks * BLOCK_SIZE)
    spans = (_VerifiedSpans(bundle.reader, start, start + length, span_blocks, workers, before_reuse=batch.flush,
                            bundle_fd=bundle_fd, self_head=self_head, self_every=self_every) if length else None)
    try:
        for chunk in fs.iter_file(inode, read=spans.get if spans else None):
            batch.add(chunk)
        batch.flush()
    finally:
        if spans is not None:
            spans.close()
    return batch.written
