"""U-Boot environment images, read and written the way ``fw_setenv`` and U-Boot do (pure codec).

Layout of one copy of ``size`` bytes (little-endian CRC, as on arm64):

    single:     crc32(data) u32 | data
    redundant:  crc32(data) u32 | flags u8 | data

``data`` is ``key=value\\0 ... \\0`` padded to the end. With two copies, U-Boot loads the copy
whose CRC is good, and if both are, the one with the larger flags counter (255 -> 0 wraps), the
rule in U-Boot's ``env_import_redund``. We write the stale copy first with counter + 1, then the
other with counter + 2: at every moment one copy is intact, and once the first write is durable
the new contents win - so BOOT_ORDER and BOOT_x_LEFT always change together.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.ota.errors import OtaStateError
from agent.state import atomic_write

DEFAULT_ENV_SIZE = 0x4000
_MAX_ENV_SIZE = 1 << 20


def encode(variables: Mapping[str, str], size: int, *, redundant: bool, flags: int = 0) -> bytes:
    header = 5 if redundant else 4
    body = bytearray()
    for key in sorted(variables):
        value = variables[key]
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise OtaStateError(f"invalid environment variable {key!r}", code="ota.env_invalid")
        body += f"{key}={value}".encode() + b"\0"
    body += b"\0"
    if len(body) > size - header:
        raise OtaStateError("environment does not fit its size", code="ota.env_full")
    data = bytes(body) + b"\0" * (size - header - len(body))
    crc = zlib.crc32(data).to_bytes(4, "little")
    return crc + (bytes([flags & 0xFF]) if redundant else b"") + data


def decode(image: bytes, *, redundant: bool) -> tuple[dict[str, str], int]:
    """(variables, flags); raises OtaStateError on a bad CRC or syntax."""
    header = 5 if redundant else 4
    if len(image) <= header:
        raise OtaStateError("environment image too small", code="ota.env_corrupt")
    data = image[header:]
    if zlib.crc32(data).to_bytes(4, "little") != image[:4]:
        raise OtaStateError("environment CRC mismatch", code="ota.env_crc")
    flags = image[4] if redundant else 0
    out: dict[str, str] = {}
    for entry in data.split(b"\0"):
        if not entry:
            break
        key, sep, value = entry.partition(b"=")
        if not sep or not key:
            raise OtaStateError("environment entry without '='", code="ota.env_corrupt")
        try:
            out[key.decode()] = value.decode()
        except UnicodeDecodeError as exc:
            raise OtaStateError("environment is not UTF-8", code="ota.env_corrupt") from exc
    return out, flags


def pick_copy(ok1: bool, flags1: int, ok2: bool, flags2: int) -> int:
    """Which copy U-Boot uses: 0 (first) or 1 (redundant). Mirrors env_import_redund."""
    if not ok1 and not ok2:
        raise OtaStateError("both environment copies are corrupt", code="ota.env_crc")
    if ok1 and not ok2:
        return 0
    if ok2 and not ok1:
        return 1
    if flags1 == 255 and flags2 == 0:
        return 1
    if flags2 == 255 and flags1 == 0:
        return 0
    return 1 if flags2 > flags1 else 0


@dataclass(frozen=True)
class EnvLocation:
    """One copy: a file (host mode; replaced atomically) or a block device / flash at ``offset``."""

    path: Path
    offset: int = 0

    def read(self, size: int) -> bytes | None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                return fh.read(size)
        except FileNotFoundError:
            return None

    def write(self, image: bytes) -> None:
        try:
            is_file = stat.S_ISREG(os.stat(self.path).st_mode)
        except FileNotFoundError:
            is_file = True
        if is_file and self.offset == 0:
            atomic_write(self.path, image)
            return
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, image, self.offset)
            os.fsync(fd)
        finally:
            os.close(fd)


class UBootEnv:
    """Read-modify-write of the environment with fw_setenv's redundancy rules."""

    def __init__(self, primary: EnvLocation, redundant: EnvLocation | None, size: int = DEFAULT_ENV_SIZE) -> None:
        if not 16 <= size <= _MAX_ENV_SIZE:
            raise OtaStateError("environment size out of range", code="ota.env_invalid")
        self._copies = (primary, redundant)
        self._size = size

    def _load(self) -> tuple[dict[str, str], int, int] | None:
        """(vars, active copy index, flags) or None when no copy was ever written."""
        primary, redundant = self._copies
        if redundant is None:
            raw = primary.read(self._size)
            if raw is None:
                return None
            variables, _ = decode(raw, redundant=False)
            return variables, 0, 0
        results: list[tuple[dict[str, str], int] | None] = []
        raws = [primary.read(self._size), redundant.read(self._size)]
        if raws[0] is None and raws[1] is None:
            return None
        for raw in raws:
            try:
                results.append(decode(raw, redundant=True) if raw is not None else None)
            except OtaStateError:
                results.append(None)
        r0, r1 = results
        idx = pick_copy(r0 is not None, r0[1] if r0 else 0, r1 is not None, r1[1] if r1 else 0)
        chosen = results[idx]
        assert chosen is not None
        return chosen[0], idx, chosen[1]

    def read(self) -> dict[str, str] | None:
        loaded = self._load()
        return None if loaded is None else loaded[0]

    def write(self, variables: Mapping[str, str]) -> None:
        primary, redundant = self._copies
        if redundant is None:
            primary.write(encode(variables, self._size, redundant=False))
            return
        try:
            loaded = self._load()
        except OtaStateError:
            loaded = None
        active, flags = (loaded[1], loaded[2]) if loaded else (1, 0)
        stale = 1 - active
        self._copies_at(stale).write(encode(variables, self._size, redundant=True, flags=flags + 1))
        self._copies_at(active).write(encode(variables, self._size, redundant=True, flags=flags + 2))

    def _copies_at(self, index: int) -> EnvLocation:
        loc = self._copies[index]
        assert loc is not None
        return loc
