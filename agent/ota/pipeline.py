"""The install write path: bundle -> verified bytes -> slot, on two cores, memory bounded.

Two stages joined by a small pool of reusable buffers:

- a worker thread reads the image's data blocks from the bundle in 1 MiB spans (one ``preadv``
  into a pool buffer, no per-read allocation) and checks every 4 KiB block against the signed
  verity tree (``VerifiedReader.read_blocks_into``); hashlib and preadv release the GIL;
- the calling thread cuts squashfs blocks out of verified spans (memoryviews, no copy),
  decompresses where needed and writes them to the slot (``os.write`` releases the GIL).

TOCTOU: a span is handed over only after all its blocks verified, and it lives in a buffer only
this process writes to, so the bytes written are the bytes checked; a span that fails never
reaches the writer. Memory: ``BUFFERS`` x ``SPAN`` plus the reader's hash-block cache, whatever
the image size. No second whole-image hash: the verity tree already authenticates every payload
byte the image is decoded from (docs/ota.md, "Why no second image hash").
"""

from __future__ import annotations

import collections
import queue
import threading

from agent.ota.slots import SlotWriter
from bootverify.bundle.bundle import OpenedBundle
from bootverify.bundle.manifest import ImageEntry
from bootverify.bundle.verity import BLOCK_SIZE, VerifiedReader
from bootverify.errors import PayloadError

SPAN_BLOCKS = 256  # 1 MiB: two level-0 hash blocks' worth, large enough to amortise each pread
BUFFERS = 4  # >= 3: a squashfs block (<= 1 MiB) straddles at most two spans, one more reads ahead

_Span = tuple[int, int, bytearray]  # (first payload byte, length, buffer)


class _VerifiedSpans:
    """Payload bytes ``[start, end)`` in forward order, verified ahead by a worker thread."""

    def __init__(self, reader: VerifiedReader, start: int, end: int,
                 span_blocks: int = SPAN_BLOCKS, buffers: int = BUFFERS) -> None:
        self._reader = reader
        self._first = start // BLOCK_SIZE
        self._end = -(-end // BLOCK_SIZE)
        self._span_blocks = span_blocks
        self._free: queue.Queue[bytearray | None] = queue.Queue()
        for _ in range(buffers):
            self._free.put(bytearray(span_blocks * BLOCK_SIZE))
        # Never longer than the pool: every item holds one of its buffers.
        self._ready: queue.Queue[_Span | BaseException | None] = queue.Queue()
        self._held: collections.deque[_Span] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ota-verify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            block = self._first
            while block < self._end:
                buf = self._free.get()
                if buf is None or self._stop.is_set():
                    return
                # Span ends on a multiple of span_blocks: whole level-0 groups, one compare each.
                count = min(self._end, (block // self._span_blocks + 1) * self._span_blocks) - block
                view = memoryview(buf)[: count * BLOCK_SIZE]
                self._reader.read_blocks_into(block, view)
                self._ready.put((block * BLOCK_SIZE, count * BLOCK_SIZE, buf))
                block += count
            self._ready.put(None)
        except BaseException as exc:  # handed to the consumer, raised there in order
            self._ready.put(exc)

    def _next(self) -> None:
        item = self._ready.get()
        if item is None:
            raise PayloadError("read beyond the image's data blocks", code="bundle.squashfs")
        if isinstance(item, BaseException):
            raise item
        self._held.append(item)

    def get(self, offset: int, length: int) -> bytes | memoryview:
        """Verified bytes; valid until the next call (their buffer may then be reused)."""
        end = offset + length
        while self._held and self._held[0][0] + self._held[0][1] <= offset:
            self._free.put(self._held.popleft()[2])
        while not self._held or self._held[-1][0] + self._held[-1][1] < end:
            self._next()
        first, size, buf = self._held[0]
        if first <= offset and end <= first + size:
            return memoryview(buf)[offset - first : end - first]
        # A block across two spans: one small copy (at most one block per span).
        parts = []
        for first, size, buf in self._held:
            lo, hi = max(offset, first), min(end, first + size)
            if lo < hi:
                parts.append(memoryview(buf)[lo - first : hi - first])
        return b"".join(parts)

    def close(self) -> None:
        self._stop.set()
        self._free.put(None)
        self._thread.join()


def write_image(bundle: OpenedBundle, entry: ImageEntry, writer: SlotWriter) -> int:
    """Stream the verified image ``entry`` into ``writer``; returns the bytes written. Raises
    ``BootVerifyError`` for anything that fails verification, ``OSError`` for I/O."""
    fs, inode = bundle.image_file(entry)
    start, length = fs.data_extent(inode)
    spans = _VerifiedSpans(bundle.reader, start, start + length) if length else None
    written = 0
    try:
        for chunk in fs.iter_file(inode, read=spans.get if spans else None):
            writer.write(chunk)
            written += len(chunk)
    finally:
        if spans is not None:
            spans.close()
    return written
