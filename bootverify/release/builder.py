"""Build and re-sign RAUC 1.8 compatible verity bundles.

Same steps as ``rauc bundle`` with ``format=verity``: images + manifest.raucm into a squashfs made by
mksquashfs with RAUC's arguments, zero padding to 4096, the dm-verity tree appended, then the
manifest with the verity fields signed as CMS (content embedded) and appended with its length.
Streaming throughout: memory does not grow with the image size (one digest per 4 KiB for the tree).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from cryptography import x509

from bootverify.bundle.bundle import open_bundle
from bootverify.bundle.cms import Keyring, Signer, sign_content
from bootverify.bundle.manifest import META_SECTION, ImageEntry, Manifest, render_manifest
from bootverify.bundle.verity import BLOCK_SIZE, SALT_SIZE, TreeBuilder
from bootverify.errors import ReleaseError
from bootverify.fsutil import atomic_replace

CHUNK = 1024 * 1024
MIN_PAYLOAD_BLOCKS = 2
MKSQUASHFS_ARGS = ("-all-root", "-noappend", "-no-progress", "-no-xattrs")
BUNDLE_MODE = 0o644  # bundles are public artefacts


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def build_bundle(
    out: Path,
    *,
    images: Mapping[str, Path],
    compatible: str,
    version: str,
    security_version: int,
    signers: Sequence[Signer],
    now: dt.datetime,
    min_version: str | None = None,
    description: str | None = None,
    build: str | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
    mksquashfs_args: Sequence[str] = (),
) -> Manifest:
    if not images:
        raise ReleaseError("a bundle needs at least one image", code="release.no_image")
    if security_version < 0:
        raise ReleaseError("security version must be >= 0", code="release.bad_security_version")
    if shutil.which("mksquashfs") is None:
        raise ReleaseError("mksquashfs not found (package squashfs-tools)", code="release.no_mksquashfs")
    meta = {"security-version": str(security_version)}
    if min_version:
        meta["min-version"] = min_version
    with tempfile.TemporaryDirectory(prefix="camera-ota-") as tmp:
        content = Path(tmp) / "content"
        content.mkdir()
        entries = []
        for slotclass, src in sorted(images.items()):
            filename = f"{slotclass}.img"
            dst = content / filename
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            digest, size = _sha256_file(dst)
            entries.append(ImageEntry(slotclass, filename, digest, size))
        manifest = Manifest(compatible=compatible, version=version, description=description, build=build,
                            bundle_format="verity", images=tuple(entries), meta={META_SECTION: meta})
        (content / "manifest.raucm").write_bytes(render_manifest(manifest))
        payload = Path(tmp) / "payload.sqfs"
        proc = subprocess.run(["mksquashfs", str(content), str(payload), *MKSQUASHFS_ARGS, *mksquashfs_args],
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise ReleaseError(f"mksquashfs failed: {proc.stderr.decode(errors='replace')[-500:]}",
                               code="release.mksquashfs")
        return _assemble(out, payload, manifest, signers, now, crls)


def _append_signature(dst: BinaryIO, der: bytes) -> None:
    dst.write(der)
    dst.write(len(der).to_bytes(8, "big"))


def _assemble(out: Path, payload: Path, manifest: Manifest, signers: Sequence[Signer], now: dt.datetime,
              crls: Sequence[x509.CertificateRevocationList]) -> Manifest:
    salt = secrets.token_bytes(SALT_SIZE)
    builder = TreeBuilder(salt)
    blocks = 0
    with open(payload, "rb") as src, atomic_replace(out, BUNDLE_MODE) as dst:
        while block := src.read(BLOCK_SIZE):
            if len(block) < BLOCK_SIZE:
                block += b"\0" * (BLOCK_SIZE - len(block))
            builder.add_block(block)
            dst.write(block)
            blocks += 1
        # RAUC refuses payloads of 4096 bytes or less (and their tree would be empty).
        while blocks < MIN_PAYLOAD_BLOCKS:
            builder.add_block(bytes(BLOCK_SIZE))
            dst.write(bytes(BLOCK_SIZE))
            blocks += 1
        tree = builder.finish()
        dst.write(tree.tree)
        signed = replace(manifest, verity_hash=tree.root_hash.hex(), verity_salt=salt.hex(),
                         verity_size=len(tree.tree))
        _append_signature(dst, sign_content(render_manifest(signed), signers, signing_time=now, crls=crls))
    return signed


def resign_bundle(src: Path, out: Path, *, keyring: Keyring, signers: Sequence[Signer], now: dt.datetime,
                  crls: Sequence[x509.CertificateRevocationList] = ()) -> Manifest:
    """New signature over the same manifest bytes (e.g. after a signing-certificate rotation).

    The old signature must verify against ``keyring`` first (one ``open_bundle``: chain, CRL,
    manifest, layout): resign never launders a bundle. Payload and tree are copied unchanged; the
    verity root inside the re-signed manifest still covers every payload byte.
    """
    with open(src, "rb") as fh:
        fd = fh.fileno()
        bundle = open_bundle(lambda offset, length: os.pread(fd, length, offset), os.fstat(fd).st_size,
                             keyring, now)
        new_der = sign_content(bundle.content, signers, signing_time=now, crls=crls)
        with atomic_replace(out, BUNDLE_MODE) as dst:
            remaining = bundle.layout.signature_offset
            while remaining:
                chunk = os.pread(fd, min(CHUNK, remaining), bundle.layout.signature_offset - remaining)
                if not chunk:
                    raise ReleaseError("bundle shrank while re-signing", code="release.io")
                dst.write(chunk)
                remaining -= len(chunk)
            _append_signature(dst, new_der)
    return bundle.manifest
