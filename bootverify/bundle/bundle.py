"""RAUC "verity" bundles: the framing, and opening one signature-first.

    [ squashfs payload, zero-padded to 4096 ][ dm-verity hash tree ][ CMS SignedData ][ u64 BE len(CMS) ]

The CMS embeds the manifest, whose ``[bundle]`` section holds verity-hash / verity-salt /
verity-size. ``open_bundle`` reads only the 8-byte trailer and the CMS, verifies the signature, and
only then parses the manifest and checks that the sizes add up exactly (no trailing garbage, no
truncation). The payload is reached only through ``VerifiedReader``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509

from bootverify.bundle.cms import Keyring, SignerInfo, verify_signed_content
from bootverify.bundle.limits import BundleLimits as BundleLimits
from bootverify.bundle.manifest import ImageEntry, Manifest, parse_manifest, require_verity
from bootverify.bundle.squashfs import FileInode, SquashFs
from bootverify.bundle.verity import BLOCK_SIZE, Pread, PreadInto, VerifiedReader, tree_size
from bootverify.errors import BundleFormatError, PayloadError

TRAILER = 8


@dataclass(frozen=True)
class Layout:
    payload_size: int
    tree_offset: int
    tree_size: int
    signature_offset: int
    signature_size: int


def read_signature(pread: Pread, size: int, limits: BundleLimits) -> tuple[bytes, int]:
    """The raw CMS bytes and their offset, from the trailer. Nothing else is looked at."""
    if size > limits.max_bundle_bytes:
        raise BundleFormatError("bundle larger than allowed", code="bundle.too_large")
    if size < TRAILER + 1 + BLOCK_SIZE:
        raise BundleFormatError("bundle too small", code="bundle.truncated")
    sig_len = int.from_bytes(pread(size - TRAILER, TRAILER), "big")
    if sig_len == 0 or sig_len > limits.max_signature_bytes:
        raise BundleFormatError(f"signature length {sig_len} out of range", code="bundle.signature_size")
    if sig_len > size - TRAILER - BLOCK_SIZE:
        raise BundleFormatError("signature length exceeds the bundle", code="bundle.truncated")
    offset = size - TRAILER - sig_len
    der = pread(offset, sig_len)
    if len(der) != sig_len:
        raise BundleFormatError("bundle shorter than its trailer says", code="bundle.truncated")
    return der, offset


def layout_for(manifest: Manifest, size: int, sig_offset: int) -> Layout:
    _root, _salt, vsize = require_verity(manifest)
    payload = sig_offset - vsize
    if payload <= 0 or payload % BLOCK_SIZE or vsize % BLOCK_SIZE:
        raise BundleFormatError("payload/verity sizes are not 4096-aligned", code="bundle.layout")
    # The tree size is a function of the payload size: any difference means bytes were added to or
    # cut from the payload (trailing garbage before the signature, truncation).
    if tree_size(payload // BLOCK_SIZE) != vsize:
        raise BundleFormatError("verity tree size does not fit the payload size", code="bundle.layout")
    return Layout(payload, payload, vsize, sig_offset, size - TRAILER - sig_offset)


@dataclass
class OpenedBundle:
    manifest: Manifest
    signers: tuple[SignerInfo, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    layout: Layout
    reader: VerifiedReader
    signature_sha256: str
    content: bytes  # the signed manifest exactly as signed (resign re-signs these bytes)

    def squashfs(self) -> SquashFs:
        return SquashFs(self.reader.read, self.layout.payload_size)

    def image_file(self, entry: ImageEntry) -> tuple[SquashFs, FileInode]:
        """The squashfs and the image's inode, its size checked against the manifest."""
        fs = self.squashfs()
        inode = fs.lookup(entry.filename)
        if entry.size is not None and inode.file_size != entry.size:
            raise PayloadError("image size differs from the manifest", code="bundle.image_size")
        return fs, inode

    def iter_image(self, entry: ImageEntry, *, check_digest: bool = True) -> Iterator[bytes | memoryview]:
        """Verified image bytes in order; the manifest's size and (unless ``check_digest`` is
        off, see docs/ota.md on why the installer may skip it) sha256 are checked at the end."""
        fs, inode = self.image_file(entry)
        h = hashlib.sha256() if check_digest else None
        for chunk in fs.iter_file(inode):
            if h is not None:
                h.update(chunk)
            yield chunk
        if h is not None:
            check_image_digest(entry, h.hexdigest())


def check_image_digest(entry: ImageEntry, hexdigest: str) -> None:
    if entry.sha256 is not None and not hmac.compare_digest(hexdigest, entry.sha256):
        raise PayloadError("image digest differs from the manifest", code="bundle.image_digest")


def open_bundle(pread: Pread, size: int, keyring: Keyring, now: dt.datetime,
                limits: BundleLimits | None = None, *, pread_into: PreadInto | None = None) -> OpenedBundle:
    limits = limits or BundleLimits()
    der, sig_offset = read_signature(pread, size, limits)
    verified = verify_signed_content(der, keyring, now, min_signers=limits.min_signers,
                                     require_crl=limits.require_crl, max_bytes=limits.max_signature_bytes)
    manifest = parse_manifest(verified.content)
    layout = layout_for(manifest, size, sig_offset)
    root, salt, _ = require_verity(manifest)
    reader = VerifiedReader(pread, data_offset=0, data_size=layout.payload_size, tree_offset=layout.tree_offset,
                            root_hash=root, salt=salt, pread_into=pread_into)
    return OpenedBundle(manifest, verified.signers, verified.crls, layout, reader, hashlib.sha256(der).hexdigest(),
                        verified.content)


def verify_whole_payload(bundle: OpenedBundle) -> int:
    """Check every payload block (``verify``/``info``); returns the number of blocks."""
    blocks = bundle.layout.payload_size // BLOCK_SIZE
    span = 256  # 1 MiB per read, one buffer for the whole payload
    buf = memoryview(bytearray(span * BLOCK_SIZE))
    for first in range(0, blocks, span):
        bundle.reader.read_blocks_into(first, buf[: min(span, blocks - first) * BLOCK_SIZE])
    return blocks
