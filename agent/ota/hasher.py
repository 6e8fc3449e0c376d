"""The install pipeline's hashing worker: a separate process that reads payload spans of a bundle
into shared memory and computes each 4 KiB block's verity digest there.

Why a process: SHA-256 of every payload block is most of an install's CPU. In a thread, hashlib
drops and retakes the GIL for every 4 KiB block, and those hand-overs kept a second thread off the
second core (docs/ota.md section 8); processes do not share a GIL.

The worker only computes digests. It decides nothing: the installer compares them with the hash
tree it verified against the signed root hash, and only then writes the span from the same shared
buffer. The worker writes a buffer only while it holds the request for it, before it replies, so
the bytes checked are the bytes written (TOCTOU). It gets no descriptor but the bundle (read-only),
the shared memory and its two pipes, so it cannot touch a slot or the state.

The file is run as a script with ``python -I -S`` (only the standard library, nothing from the
environment, the working directory or site-packages), and it exits when its request pipe closes,
so it ends with the installer even when that is killed.

Wire format, native byte order (both ends are the same machine):
- argv: bundle fd, shared-memory fd, request fd, reply fd, buffers, span bytes, salt (hex);
- shared memory: ``buffers`` data areas of ``span`` bytes, then ``buffers`` digest areas of
  ``span // 4096 * 32`` bytes;
- request ``REQUEST``: buffer index, file offset, length (whole blocks, at most ``span``);
- reply ``REPLY``: buffer index, bytes read (``length`` on success, fewer if the file ended) or a
  negative errno.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import sys

BLOCK = 4096
DIGEST = 32
REQUEST = struct.Struct("=IQI")
REPLY = struct.Struct("=Iq")
EXIT_PROTOCOL = 3  # a request the installer can never send: stop rather than guess


def layout(buffers: int, span: int) -> tuple[int, int]:
    """(offset of the digest areas, total size) of the shared memory."""
    digests = buffers * span
    return digests, digests + buffers * (span // BLOCK) * DIGEST


def read_exact(fd: int, size: int) -> bytes:
    """``size`` bytes from a pipe, or b"" at EOF (the installer reads replies with it too)."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return b""  # EOF: the installer is done (or gone)
        data += chunk
    return data


def serve(bundle_fd: int, shm_fd: int, requests: int, replies: int, buffers: int, span: int, salt: bytes) -> int:
    digest_base, size = layout(buffers, span)
    shm = mmap.mmap(shm_fd, size)
    mem = memoryview(shm)
    copy = hashlib.sha256(salt).copy
    digest_span = span // BLOCK * DIGEST
    # Views of every block of every buffer, made once: slicing per block cost ~10 % of the hashing.
    blocks = [[mem[i * span + off : i * span + off + BLOCK] for off in range(0, span, BLOCK)] for i in range(buffers)]
    while True:
        request = read_exact(requests, REQUEST.size)
        if not request:
            return 0
        index, offset, length = REQUEST.unpack(request)
        if index >= buffers or length > span or length % BLOCK or length == 0:
            return EXIT_PROTOCOL
        data = mem[index * span : index * span + length]
        got = 0
        try:
            while got < length:
                n = os.preadv(bundle_fd, [data[got:]], offset + got)
                if n <= 0:
                    break
                got += n
        except OSError as exc:
            got = -(exc.errno or 5)
        if got == length:
            digests = []
            for block in blocks[index][: length // BLOCK]:
                h = copy()
                h.update(block)
                digests.append(h.digest())
            base = digest_base + index * digest_span
            mem[base : base + length // BLOCK * DIGEST] = b"".join(digests)
        os.write(replies, REPLY.pack(index, got))


def main(argv: list[str]) -> int:
    try:
        bundle_fd, shm_fd, requests, replies, buffers, span = (int(a) for a in argv[:6])
        salt = bytes.fromhex(argv[6])
    except (ValueError, IndexError):
        return EXIT_PROTOCOL
    return serve(bundle_fd, shm_fd, requests, replies, buffers, span, salt)


if __name__ == "__main__":
    # No interpreter teardown (milliseconds the installer would wait for): nothing to flush.
    os._exit(main(sys.argv[1:]))
