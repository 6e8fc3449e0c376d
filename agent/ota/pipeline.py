"""The install write path: bundle -> verified bytes -> slot, on two cores, memory bounded.

Two stages joined by a small pool of reusable buffers:

- a worker thread reads the image's data blocks from the bundle in 1 MiB spans (one ``preadv``
  into a pool buffer, no per-read allocation) and checks every 4 KiB block against the signed
  verity tree (``VerifiedReader.read_blocks_into``); hashlib and preadv release the GIL;
- the calling thread cuts squashfs blocks out of verified spans (memoryviews, no copy),
  decompresses where needed and writes a span's blocks to the slot with ONE ``writev``.

Why one worker and one ``writev`` per span: every GIL-releasing call is a point where a thread
may have to win the GIL back (CPython's waiter asks for it only after a whole switch interval
without any switch, and a thread hashing 4 KiB blocks drops and retakes it every few
microseconds). Measured: a second hashing thread added CPU and context switches without a
faster install, and a write per squashfs block instead of one per span cost ~15 % more CPU
(docs/ota.md section 8).

TOCTOU: a span is handed over only after all its blocks verified, and it lives in a buffer only
this process writes to, so the bytes written are the bytes checked; a span that fails never
reaches the writer. Memory: ``BUFFERS`` x ``SPAN`` plus the reader's hash-block cache, whatever
the image size. No second whole-image hash: the verity tree already authenticates every payload
byte the image is decoded from (docs/ota.md, "Why no second image hash").
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
from collections.abc import Callable

from agent.ota.slots import SlotWriter
from bootverify.bundle.bundle import OpenedBundle
from bootverify.bundle.manifest import ImageEntry
from bootverify.bundle.verity import BLOCK_SIZE, VerifiedReader
from bootverify.errors import PayloadError

SPAN_BLOCKS = 256  # 1 MiB: two level-0 hash blocks' worth, large enough to amortise each pread
WORKERS = 1  # against 2: less CPU, and faster on the idle two-core host (docs/ota.md section 8)
# Span buffers in all (4 MiB), at least two per worker: the consumer holds at most two consecutive
# spans, and the worker verifies ahead into the others while the consumer writes.
BUFFERS = 4
BATCH_CHUNKS = 512  # squashfs blocks per writev, below IOV_MAX (1024)

_Span = tuple[int, int, bytearray]  # (first payload byte, length, buffer)


class _VerifiedSpans:
    """Payload bytes ``[start, end)`` in forward order, verified ahead by worker threads.

    Span ``i`` (aligned to ``span_blocks``) is verified by worker ``i % workers`` into one of that
    worker's own buffers, and the consumer takes them round-robin, so spans arrive in order. Own
    buffers per worker (at least two) rule out a deadlock: the consumer holds at most two
    consecutive spans (a squashfs block is at most one span long) and gives back every span it
    has passed (after ``before_reuse``, which writes out the views into it) before it waits for
    the next one."""

    def __init__(self, reader: VerifiedReader, start: int, end: int, span_blocks: int = SPAN_BLOCKS,
                 workers: int = WORKERS, buffers: int = BUFFERS,
                 before_reuse: Callable[[], None] = lambda: None) -> None:
        self._reader = reader
        self._before_reuse = before_reuse
        self._span_blocks = span_blocks
        first, last = start // BLOCK_SIZE, -(-end // BLOCK_SIZE)
        bounds = [first, *range((first // span_blocks + 1) * span_blocks, last, span_blocks), last]
        self._spans = list(itertools.pairwise(bounds))
        self._stop = threading.Event()
        self._free: list[queue.Queue[bytearray | None]] = []
        self._ready: list[queue.Queue[_Span | BaseException]] = []
        self._threads = []
        for w in range(min(workers, len(self._spans))):
            free: queue.Queue[bytearray | None] = queue.Queue()
            for _ in range(max(2, buffers // workers)):
                free.put(bytearray(span_blocks * BLOCK_SIZE))
            self._free.append(free)
            self._ready.append(queue.Queue())
            t = threading.Thread(target=self._run, args=(w,), name=f"ota-verify-{w}", daemon=True)
            self._threads.append(t)
        self._next_span = 0
        self._held: collections.deque[tuple[int, int, bytearray, int]] = collections.deque()
        for t in self._threads:
            t.start()

    def _run(self, worker: int) -> None:
        free, ready = self._free[worker], self._ready[worker]
        try:
            for first, last in self._spans[worker :: len(self._threads)]:
                buf = free.get()
                if buf is None or self._stop.is_set():
                    return
                view = memoryview(buf)[: (last - first) * BLOCK_SIZE]
                self._reader.read_blocks_into(first, view)
                ready.put((first * BLOCK_SIZE, len(view), buf))
        except BaseException as exc:  # handed to the consumer, raised there in order
            ready.put(exc)

    def _next(self) -> None:
        if self._next_span >= len(self._spans):
            raise PayloadError("read beyond the image's data blocks", code="bundle.squashfs")
        worker = self._next_span % len(self._threads)
        item = self._ready[worker].get()
        if isinstance(item, BaseException):
            raise item
        self._held.append((*item, worker))
        self._next_span += 1

    def get(self, offset: int, length: int) -> bytes | memoryview:
        """Verified bytes; valid until ``before_reuse`` is called (their buffer is reused after)."""
        end = offset + length
        if self._held and self._held[0][0] + self._held[0][1] <= offset:
            self._before_reuse()
        while self._held and self._held[0][0] + self._held[0][1] <= offset:
            _first, _size, buf, worker = self._held.popleft()
            self._free[worker].put(buf)
        while not self._held or self._held[-1][0] + self._held[-1][1] < end:
            self._next()
        first, size, buf, _w = self._held[0]
        if first <= offset and end <= first + size:
            return memoryview(buf)[offset - first : end - first]
        # A block across two spans: one small copy (at most one block per span).
        parts = []
        for first, size, buf, _w in self._held:
            lo, hi = max(offset, first), min(end, first + size)
            if lo < hi:
                parts.append(memoryview(buf)[lo - first : hi - first])
        return b"".join(parts)

    def close(self) -> None:
        self._stop.set()
        for free in self._free:
            free.put(None)
        for t in self._threads:
            t.join()


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


def write_image(bundle: OpenedBundle, entry: ImageEntry, writer: SlotWriter, *,
                span_blocks: int = SPAN_BLOCKS, workers: int = WORKERS) -> int:
    """Stream the verified image ``entry`` into ``writer``; returns the bytes written. Raises
    ``BootVerifyError`` for anything that fails verification, ``OSError`` for I/O."""
    fs, inode = bundle.image_file(entry)
    start, length = fs.data_extent(inode)
    # The no-deadlock argument needs every squashfs block to fit in one span.
    span_blocks = max(span_blocks, fs.sb.block_size // BLOCK_SIZE)
    batch = _Batch(writer, span_blocks * BLOCK_SIZE)
    spans = (_VerifiedSpans(bundle.reader, start, start + length, span_blocks, workers, before_reuse=batch.flush)
             if length else None)
    try:
        for chunk in fs.iter_file(inode, read=spans.get if spans else None):
            batch.add(chunk)
        batch.flush()
    finally:
        if spans is not None:
            spans.close()
    return batch.written
