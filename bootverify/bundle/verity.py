"""dm-verity hash trees as RAUC's verity bundles use them, and a reader that checks every block.

Format (dm-verity version 1 without superblock, what ``veritysetup format --no-superblock`` and
RAUC write): SHA-256, 4096-byte data and hash blocks, ``hash(block) = sha256(salt || block)``,
each hash block holds 128 digests padded with zeros, the levels are stored top (one block) first,
and ``root = sha256(salt || top block)``.

``VerifiedReader`` is the TOCTOU defence: it hands out only bytes it has just checked against the
signed root, through hash blocks it has checked too, and it reads every byte from the untrusted
file exactly once per use, so replacing the file during an install cannot get an unverified byte
through. I/O is a ``pread(offset, length) -> bytes`` callable (and optionally a
``pread_into(buffer, offset) -> int`` one for the installer's zero-copy path), so the core stays pure.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bootverify.errors import BundleFormatError, VerityError

BLOCK_SIZE = 4096
DIGEST_SIZE = 32
HASHES_PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE
SALT_SIZE = 32

Pread = Callable[[int, int], bytes]
# Fills the buffer from the offset (like os.preadv(fd, [buf], offset)); returns the bytes read.
PreadInto = Callable[[memoryview, int], int]


def level_block_counts(data_blocks: int) -> list[int]:
    """Hash blocks per level, level 0 (hashes of data blocks) first.

    A single data block has no hash levels at all: the root is that block's hash (veritysetup).
    """
    if data_blocks < 1:
        raise BundleFormatError("verity needs at least one data block", code="bundle.verity_empty")
    counts = []
    n = data_blocks
    while n > 1:
        n = -(-n // HASHES_PER_BLOCK)
        counts.append(n)
    return counts


def tree_size(data_blocks: int) -> int:
    return sum(level_block_counts(data_blocks)) * BLOCK_SIZE


def level_offsets(data_blocks: int) -> list[int]:
    """Byte offset of each level inside the tree (level 0 first in the list, stored last)."""
    counts = level_block_counts(data_blocks)
    offsets = [0] * len(counts)
    pos = 0
    for level in range(len(counts) - 1, -1, -1):
        offsets[level] = pos
        pos += counts[level] * BLOCK_SIZE
    return offsets


def _digest(salt: bytes, block: bytes) -> bytes:
    h = hashlib.sha256(salt)
    h.update(block)
    return h.digest()


def _pack(digests: list[bytes]) -> bytes:
    """Hash blocks for one level: 128 digests per block, the last block zero-padded."""
    raw = b"".join(digests)
    pad = (-len(raw)) % BLOCK_SIZE
    return raw + b"\0" * pad


@dataclass(frozen=True)
class VerityTree:
    tree: bytes
    root_hash: bytes
    salt: bytes
    data_blocks: int


class TreeBuilder:
    """Streaming builder: feed data blocks in order, then ``finish``.

    Memory is one digest per data block (8 MiB for 1 GiB), the upper levels are tiny.
    """

    def __init__(self, salt: bytes) -> None:
        if len(salt) != SALT_SIZE:
            raise BundleFormatError("verity salt must be 32 bytes", code="bundle.verity_salt")
        self._salt = salt
        self._level0: list[bytes] = []

    def add_block(self, block: bytes) -> None:
        if len(block) != BLOCK_SIZE:
            raise BundleFormatError("verity data must be whole 4096-byte blocks", code="bundle.verity_align")
        self._level0.append(_digest(self._salt, block))

    def finish(self) -> VerityTree:
        n = len(self._level0)
        counts = level_block_counts(n)
        levels: list[bytes] = []
        digests = self._level0
        for _ in counts:
            packed = _pack(digests)
            levels.append(packed)
            digests = [
                _digest(self._salt, packed[i : i + BLOCK_SIZE]) for i in range(0, len(packed), BLOCK_SIZE)
            ]
        root = digests[0]
        return VerityTree(b"".join(reversed(levels)), root, self._salt, n)


def build_tree(blocks: Iterable[bytes], salt: bytes) -> VerityTree:
    builder = TreeBuilder(salt)
    for block in blocks:
        builder.add_block(block)
    return builder.finish()


class VerifiedReader:
    """Random access to a verity-protected area; every returned byte has been checked.

    ``data_offset``/``data_size`` locate the protected data in the file, ``tree_offset`` the hash
    tree. Verified hash blocks are kept in a small LRU (sequential reads touch one level-0 block per
    512 KiB), so memory stays bounded whatever the bundle size.
    """

    def __init__(
        self,
        pread: Pread,
        *,
        data_offset: int,
        data_size: int,
        tree_offset: int,
        root_hash: bytes,
        salt: bytes,
        cache_blocks: int = 64,
        pread_into: PreadInto | None = None,
    ) -> None:
        if data_size <= 0 or data_size % BLOCK_SIZE:
            raise BundleFormatError("verity data size is not a multiple of 4096", code="bundle.verity_align")
        if len(root_hash) != DIGEST_SIZE or len(salt) != SALT_SIZE:
            raise BundleFormatError("verity root hash or salt has the wrong size", code="bundle.verity_params")
        self._pread = pread
        self._pread_into = pread_into
        self._data_offset = data_offset
        self.data_size = data_size
        self._tree_offset = tree_offset
        self._root = root_hash
        self._salt = salt
        self._blocks = data_size // BLOCK_SIZE
        self._counts = level_block_counts(self._blocks)
        self._offsets = level_offsets(self._blocks)
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_max = max(cache_blocks, len(self._counts) + 1)
        self._last: tuple[int, bytes] | None = None
        self._salted = hashlib.sha256(salt)
        self.blocks_verified = 0

    @property
    def salt(self) -> bytes:
        return self._salt

    @property
    def data_offset(self) -> int:
        """Where the protected data starts in the file (for workers that read it themselves)."""
        return self._data_offset

    def _read_exact(self, offset: int, length: int) -> bytes:
        data = self._pread(offset, length)
        if len(data) != length:
            raise VerityError("bundle shrank while it was read", code="bundle.truncated_during_read")
        return data

    def _hash_block(self, level: int, index: int) -> bytes:
        key = (level, index)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        raw = self._read_exact(self._tree_offset + self._offsets[level] + index * BLOCK_SIZE, BLOCK_SIZE)
        if level == len(self._counts) - 1:
            expected = self._root
        else:
            parent = self._hash_block(level + 1, index // HASHES_PER_BLOCK)
            slot = (index % HASHES_PER_BLOCK) * DIGEST_SIZE
            expected = parent[slot : slot + DIGEST_SIZE]
        if not hmac.compare_digest(_digest(self._salt, raw), expected):
            raise VerityError(f"hash block {level}/{index} does not match the signed root", code="bundle.verity_tree")
        self._cache[key] = raw
        if len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)
        return raw

    def read_block(self, index: int) -> bytes:
        if not 0 <= index < self._blocks:
            raise BundleFormatError("read outside the verity-protected payload", code="bundle.out_of_range")
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        raw = self._read_exact(self._data_offset + index * BLOCK_SIZE, BLOCK_SIZE)
        self._verify_blocks(index, memoryview(raw))
        self._last = (index, raw)
        return raw

    def _verify_blocks(self, first: int, view: memoryview) -> None:
        """Check whole blocks ``first..`` held in ``view`` against the tree; raise on any mismatch."""
        salted = self._salted
        digests = []
        for off in range(0, len(view), BLOCK_SIZE):
            h = salted.copy()
            h.update(view[off : off + BLOCK_SIZE])
            digests.append(h.digest())
        self.verify_digests(first, b"".join(digests))

    def verify_digests(self, first: int, digests: bytes | memoryview) -> None:
        """Check the digests ``sha256(salt || block)`` of payload blocks ``first..``, computed by
        whoever holds the blocks (the installer's hashing workers), against the verified tree;
        raise ``VerityError`` naming the first block that does not match.

        The digests of consecutive blocks are laid out like a level-0 hash block, so they are
        compared one level-0 block (up to 128 blocks) at a time."""
        count, rest = divmod(len(digests), DIGEST_SIZE)
        if rest or count == 0 or first < 0 or first + count > self._blocks:
            raise BundleFormatError("read outside the verity-protected payload", code="bundle.out_of_range")
        i, last = first, first + count - 1
        while i <= last:
            if self._counts:
                group = i // HASHES_PER_BLOCK
                end = min(last, (group + 1) * HASHES_PER_BLOCK - 1)
                lo = (i % HASHES_PER_BLOCK) * DIGEST_SIZE
                expected = self._hash_block(0, group)[lo : lo + (end - i + 1) * DIGEST_SIZE]
            else:
                end, expected = i, self._root
            got = digests[(i - first) * DIGEST_SIZE : (end - first + 1) * DIGEST_SIZE]
            if not hmac.compare_digest(got, expected):
                bad = next(j for j in range(end - i + 1)
                           if not hmac.compare_digest(got[j * DIGEST_SIZE : (j + 1) * DIGEST_SIZE],
                                                      expected[j * DIGEST_SIZE : (j + 1) * DIGEST_SIZE]))
                self.blocks_verified += bad
                raise VerityError(f"payload block {i + bad} does not match the signed verity tree")
            self.blocks_verified += end - i + 1
            i = end + 1

    def _read_span(self, first: int, last: int) -> bytes:
        """Blocks ``first..last`` with ONE pread, each verified before any of them is returned."""
        raw = self._read_exact(self._data_offset + first * BLOCK_SIZE, (last - first + 1) * BLOCK_SIZE)
        self._verify_blocks(first, memoryview(raw))
        self._last = (last, raw[-BLOCK_SIZE:])
        return raw

    def read_blocks_into(self, first: int, buf: memoryview) -> None:
        """Fill ``buf`` (whole blocks) with payload blocks ``first..`` read ONCE from the file, and
        verify them. The bytes are only trustworthy if this returns; the caller owns ``buf``, so
        nobody can change them between the check and their use (TOCTOU)."""
        count, rest = divmod(len(buf), BLOCK_SIZE)
        if rest or count == 0 or first < 0 or first + count > self._blocks:
            raise BundleFormatError("read outside the verity-protected payload", code="bundle.out_of_range")
        offset = self._data_offset + first * BLOCK_SIZE
        if self._pread_into is None:
            buf[:] = self._read_exact(offset, len(buf))
        else:
            got = 0
            while got < len(buf):
                n = self._pread_into(buf[got:], offset + got)
                if n <= 0:
                    raise VerityError("bundle shrank while it was read", code="bundle.truncated_during_read")
                got += n
        self._verify_blocks(first, buf)

    def read(self, offset: int, length: int) -> bytes:
        """Verified bytes ``[offset, offset+length)`` of the protected data."""
        if offset < 0 or length < 0 or offset + length > self.data_size:
            raise BundleFormatError("read outside the verity-protected payload", code="bundle.out_of_range")
        if length == 0:
            return b""
        first, within = divmod(offset, BLOCK_SIZE)
        last = (offset + length - 1) // BLOCK_SIZE
        if first == last:
            return self.read_block(first)[within : within + length]
        # The first block may be the one verified last (squashfs blocks share 4 KiB blocks).
        head = b""
        if self._last is not None and self._last[0] == first:
            head = self._last[1]
            first += 1
        out = head + self._read_span(first, last) if first <= last else head
        return out[within : within + length]
