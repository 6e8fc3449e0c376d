"""Read-only squashfs 4.0 reader for a bundle's payload: find a root-level file, stream its bytes.

Runs only on bytes from ``VerifiedReader.read`` (every one checked against the signed verity
root), but is still written as a parser of hostile input: every size is bounded (metadata blocks
8 KiB, data blocks <= the superblock's block size <= 1 MiB, directory listings and inode counts
capped), decompression output is capped, every offset is range-checked by the reader.

Supported compressors: gzip (mksquashfs's and RAUC's default) and xz/lzma (Python's stdlib);
zstd, lz4 and lzo are refused with a clear code. Layout per the kernel's squashfs_fs.h.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bootverify.errors import PayloadError

MAGIC = 0x73717368
META_SIZE = 8192
MAX_BLOCK_SIZE = 1 << 20
MAX_DIR_BYTES = 1 << 20
FLAG_NO_FRAGMENTS = 0x10
INVALID_FRAG = 0xFFFFFFFF
DATA_UNCOMPRESSED = 1 << 24
_SUPER = struct.Struct("<IIIIIHHHHHHQQQQQQQQ")

# Data blocks may come back as memoryviews into a verified buffer (the installer's zero-copy path).
ReadFn = Callable[[int, int], bytes]
DataReadFn = Callable[[int, int], "bytes | memoryview"]
# Sparse blocks (stored size 0) are slices of this, not a new allocation per block.
_ZEROS = memoryview(bytes(MAX_BLOCK_SIZE))


def _err(msg: str, code: str = "bundle.squashfs") -> PayloadError:
    return PayloadError(msg, code=code)


def _decompress(compression: int, data: bytes | memoryview, limit: int) -> bytes:
    try:
        if compression == 1:
            d = zlib.decompressobj()
            out = d.decompress(data, limit + 1)
        elif compression in (2, 4):
            fmt = lzma.FORMAT_ALONE if compression == 2 else lzma.FORMAT_XZ
            out = lzma.LZMADecompressor(format=fmt).decompress(data, limit + 1)
        else:
            raise _err(f"squashfs compressor {compression} not supported", "bundle.squashfs_compressor")
    except (zlib.error, lzma.LZMAError) as exc:
        raise _err(f"squashfs block does not decompress: {exc}") from exc
    if len(out) > limit:
        raise _err("squashfs block decompresses beyond its limit")
    return out


@dataclass(frozen=True)
class Superblock:
    inode_count: int
    block_size: int
    fragment_count: int
    compression: int
    flags: int
    root_inode: int
    bytes_used: int
    inode_table: int
    directory_table: int
    fragment_table: int


@dataclass(frozen=True)
class FileInode:
    blocks_start: int
    file_size: int
    fragment: int
    frag_offset: int
    block_sizes: tuple[int, ...]


class SquashFs:
    def __init__(self, read: ReadFn, size: int) -> None:
        self._read = read
        self._size = size
        if size < _SUPER.size:
            raise _err("payload smaller than a squashfs superblock")
        f = _SUPER.unpack(read(0, _SUPER.size))
        (magic, inodes, _mtime, block_size, frags, comp, block_log, flags, _ids, major, _minor,
         root, used, _id_tab, _xattr, inode_tab, dir_tab, frag_tab, _export) = f
        if magic != MAGIC or major != 4:
            raise _err("payload is not squashfs 4", "bundle.squashfs_magic")
        if not 4096 <= block_size <= MAX_BLOCK_SIZE or block_size != 1 << block_log:
            raise _err("bad squashfs block size")
        if used > size or not (inode_tab < dir_tab <= used):
            raise _err("squashfs tables outside the payload")
        self.sb = Superblock(inodes, block_size, frags, comp, flags, root, used, inode_tab, dir_tab, frag_tab)

    # -- metadata --

    def _meta_block(self, pos: int) -> tuple[bytes, int]:
        """(decompressed block, position of the next block)."""
        if pos + 2 > self.sb.bytes_used:
            raise _err("metadata block outside the filesystem")
        (header,) = struct.unpack("<H", self._read(pos, 2))
        length = header & 0x7FFF
        if length == 0 or length > META_SIZE or pos + 2 + length > self.sb.bytes_used:
            raise _err("bad metadata block length")
        raw = self._read(pos + 2, length)
        data = raw if header & 0x8000 else _decompress(self.sb.compression, raw, META_SIZE)
        return data, pos + 2 + length

    def _meta_read(self, table: int, block: int, offset: int, length: int) -> tuple[bytes, int, int]:
        """Read ``length`` bytes of a metadata stream; returns (bytes, next block, next offset)."""
        out = bytearray()
        pos = table + block
        while True:
            data, nxt = self._meta_block(pos)
            if offset > len(data):
                raise _err("metadata offset beyond block")
            take = min(length - len(out), len(data) - offset)
            out += data[offset : offset + take]
            if len(out) == length:
                if offset + take == len(data):
                    return bytes(out), nxt - table, 0
                return bytes(out), pos - table, offset + take
            pos, offset = nxt, 0

    def _inode(self, ref: int) -> tuple[int, bytes, int, int]:
        block, offset = ref >> 16, ref & 0xFFFF
        head, block, offset = self._meta_read(self.sb.inode_table, block, offset, 16)
        (itype,) = struct.unpack_from("<H", head)
        return itype, head, block, offset

    def _root_listing(self) -> tuple[int, int, int]:
        itype, _h, block, offset = self._inode(self.sb.root_inode)
        if itype == 1:
            body, _, _ = self._meta_read(self.sb.inode_table, block, offset, 16)
            start, _links, size, dir_off, _parent = struct.unpack("<IIHHI", body)
        elif itype == 8:
            body, _, _ = self._meta_read(self.sb.inode_table, block, offset, 24)
            _links, size, start, _parent, _icount, dir_off, _x = struct.unpack("<IIIIHHI", body)
        else:
            raise _err("root inode is not a directory")
        return start, dir_off, max(size - 3, 0)

    def lookup(self, name: str) -> FileInode:
        """The regular file ``name`` in the root directory."""
        start, offset, size = self._root_listing()
        if size > MAX_DIR_BYTES:
            raise _err("root directory listing too large")
        listing, _, _ = self._meta_read(self.sb.directory_table, start, offset, size) if size else (b"", 0, 0)
        pos = 0
        wanted = name.encode()
        while pos + 12 <= len(listing):
            count, ino_block, _ino = struct.unpack_from("<III", listing, pos)
            pos += 12
            for _ in range(count + 1):
                if pos + 8 > len(listing):
                    raise _err("truncated directory entry")
                ino_off, _delta, _etype, nsize = struct.unpack_from("<HhHH", listing, pos)
                entry_name = listing[pos + 8 : pos + 9 + nsize]
                pos += 9 + nsize
                if entry_name == wanted:
                    return self._file_inode((ino_block << 16) | ino_off)
        raise _err(f"payload has no file {name!r}", "bundle.image_missing")

    def _file_inode(self, ref: int) -> FileInode:
        itype, _h, block, offset = self._inode(ref)
        if itype == 2:
            body, block, offset = self._meta_read(self.sb.inode_table, block, offset, 16)
            blocks_start, frag, frag_off, size = struct.unpack("<IIII", body)
        elif itype == 9:
            body, block, offset = self._meta_read(self.sb.inode_table, block, offset, 40)
            blocks_start, size, _sparse, _links, frag, frag_off, _x = struct.unpack("<QQQIIII", body)
        else:
            raise _err("image entry is not a regular file", "bundle.image_missing")
        bs = self.sb.block_size
        count = size // bs if frag != INVALID_FRAG else -(-size // bs)
        if count > (self.sb.bytes_used // 1) + 1 or count > (1 << 26):
            raise _err("file claims more blocks than the filesystem holds")
        sizes: list[int] = []
        # Block lists can be long (8192 entries for 1 GiB); read in metadata-sized chunks.
        remaining = count
        while remaining:
            n = min(remaining, 1024)
            raw, block, offset = self._meta_read(self.sb.inode_table, block, offset, 4 * n)
            sizes.extend(struct.unpack(f"<{n}I", raw))
            remaining -= n
        if frag != INVALID_FRAG and frag >= self.sb.fragment_count:
            raise _err("fragment index out of range")
        return FileInode(blocks_start, size, frag, frag_off, tuple(sizes))

    def _fragment(self, index: int) -> tuple[int, int]:
        ptr_pos = self.sb.fragment_table + (index // 512) * 8
        if ptr_pos + 8 > self.sb.bytes_used:
            raise _err("fragment table outside the filesystem")
        (block_pos,) = struct.unpack("<Q", self._read(ptr_pos, 8))
        raw, _, _ = self._meta_read(0, block_pos, (index % 512) * 16, 16)
        start, size, _unused = struct.unpack("<QII", raw)
        return start, size

    def _data_block(self, pos: int, entry: int, expect: int,
                    read: DataReadFn | None = None) -> tuple[bytes | memoryview, int]:
        on_disk = entry & ~DATA_UNCOMPRESSED & 0xFFFFFFFF
        if on_disk == 0:
            return _ZEROS[:expect], pos
        if on_disk > self.sb.block_size or pos + on_disk > self.sb.bytes_used:
            raise _err("data block outside the filesystem or too large")
        raw = (read or self._read)(pos, on_disk)
        data = raw if entry & DATA_UNCOMPRESSED else _decompress(self.sb.compression, raw, self.sb.block_size)
        return data, pos + on_disk

    def data_extent(self, inode: FileInode) -> tuple[int, int]:
        """(offset, length) of the file's full data blocks in the payload: one contiguous range
        that a sequential reader can verify ahead (the tail fragment lies elsewhere)."""
        length = sum(e & ~DATA_UNCOMPRESSED & 0xFFFFFFFF for e in inode.block_sizes)
        if inode.blocks_start + length > self.sb.bytes_used:
            raise _err("data blocks outside the filesystem")
        return inode.blocks_start, length

    def iter_file(self, inode: FileInode, read: DataReadFn | None = None) -> Iterator[bytes | memoryview]:
        """The file's bytes, one squashfs block at a time (memory: one block).

        ``read`` serves the full data blocks in order (see ``data_extent``); everything else,
        including the tail fragment, goes through the reader given to the constructor. A chunk is
        only valid until the next one is requested (it may be a view into a reused buffer)."""
        bs = self.sb.block_size
        pos = inode.blocks_start
        produced = 0
        for entry in inode.block_sizes:
            expect = min(bs, inode.file_size - produced)
            data, pos = self._data_block(pos, entry, expect, read)
            data = data[:expect]
            if len(data) != expect:
                raise _err("data block shorter than the file claims")
            produced += expect
            yield data
        if inode.fragment != INVALID_FRAG:
            tail = inode.file_size - produced
            start, entry = self._fragment(inode.fragment)
            block, _ = self._data_block(start, entry, bs)
            piece = block[inode.frag_offset : inode.frag_offset + tail]
            if len(piece) != tail:
                raise _err("fragment shorter than the file's tail")
            produced += tail
            yield piece
        if produced != inode.file_size:
            raise _err("file size does not match its blocks")
