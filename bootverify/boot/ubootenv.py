"""The U-Boot environment image codec (pure), shared by the boot stage and the OTA boot-chooser.

Layout of one copy of ``size`` bytes (little-endian CRC, as on arm64; fw_setenv / mkenvimage
format):

    single:     crc32(data) u32 | data
    redundant:  crc32(data) u32 | flags u8 | data

``data`` is ``name=value\\0 ... \\0`` zero-padded to the end. With two copies U-Boot loads the copy
whose CRC is good and, if both are, the one with the newer flags counter (255 -> 0 wraps): the rule
of U-Boot's ``env_import_redund`` (``pick_copy``). On the reference board the two copies are the
files ``uboot.env`` and ``uboot.env.redund`` on GPT partition 1 (FAT) and ENV_SIZE is 0x4000
(board/uboot/hardened.config); U-Boot honours only WRITEABLE from them. The file and device I/O
(atomic replace, write order of the two copies) is agent.ota.ubootenv's.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

from bootverify.boot.errors import EnvCrcError, EnvError, EnvFullError

ENV_SIZE = 0x4000
WRITEABLE = ("BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT")


def _header(redundant: bool) -> int:
    return 5 if redundant else 4


def encode(variables: Mapping[str, str], size: int = ENV_SIZE, *, redundant: bool = False, flags: int = 0) -> bytes:
    """One copy, entries in the mapping's order (U-Boot's own saveenv writes them sorted)."""
    header = _header(redundant)
    body = bytearray()
    for key, value in variables.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise EnvError(f"invalid environment variable {key[:64]!r}")
        body += f"{key}={value}".encode() + b"\0"
    body += b"\0"
    if len(body) > size - header:
        raise EnvFullError("environment does not fit its size")
    data = bytes(body) + b"\0" * (size - header - len(body))
    extra = bytes([flags & 0xFF]) if redundant else b""
    return struct.pack("<I", zlib.crc32(data)) + extra + data


def decode(raw: bytes, size: int | None = ENV_SIZE, *, redundant: bool = False) -> tuple[dict[str, str], int]:
    """(variables, flags counter) of one copy; ``size=None`` accepts any length."""
    header = _header(redundant)
    if size is not None and len(raw) != size:
        raise EnvError(f"environment is {len(raw)} bytes, expected {size}")
    if len(raw) <= header:
        raise EnvError("environment image too small")
    (crc,) = struct.unpack_from("<I", raw, 0)
    data = raw[header:]
    if zlib.crc32(data) != crc:
        raise EnvCrcError("environment CRC mismatch")
    out: dict[str, str] = {}
    for entry in data.split(b"\0"):
        if not entry:
            break
        name, sep, value = entry.partition(b"=")
        if not sep or not name:
            raise EnvError("malformed environment entry")
        try:
            out[name.decode()] = value.decode()
        except UnicodeDecodeError as exc:
            raise EnvError("environment entry is not UTF-8") from exc
    return out, (raw[4] if redundant else 0)


def parse_env(raw: bytes, size: int = ENV_SIZE, *, redundant: bool = False) -> dict[str, str]:
    return decode(raw, size, redundant=redundant)[0]


def build_env(values: Mapping[str, str], size: int = ENV_SIZE, *, flags: int | None = None) -> bytes:
    """One copy; ``flags`` given = redundant format with that counter byte."""
    return encode(values, size, redundant=flags is not None, flags=flags or 0)


def pick_copy(ok1: bool, flags1: int, ok2: bool, flags2: int) -> int:
    """Which copy U-Boot uses: 0 (first) or 1 (redundant). Mirrors env_import_redund."""
    if not ok1 and not ok2:
        raise EnvCrcError("no valid environment copy")
    if ok1 and not ok2:
        return 0
    if ok2 and not ok1:
        return 1
    if flags1 == 255 and flags2 == 0:
        return 1
    if flags2 == 255 and flags1 == 0:
        return 0
    return 1 if flags2 > flags1 else 0


def decode_redundant(first: bytes | None, second: bytes | None,
                     size: int | None = ENV_SIZE) -> tuple[dict[str, str], int, int]:
    """(variables, index of the copy U-Boot would use, its flags) of a redundant pair; a missing or
    damaged copy counts as invalid."""
    parsed: list[tuple[dict[str, str], int] | None] = []
    for raw in (first, second):
        try:
            parsed.append(decode(raw, size, redundant=True) if raw is not None else None)
        except EnvError:
            parsed.append(None)
    p0, p1 = parsed
    idx = pick_copy(p0 is not None, p0[1] if p0 else 0, p1 is not None, p1[1] if p1 else 0)
    chosen = parsed[idx]
    assert chosen is not None
    return chosen[0], idx, chosen[1]


def pick_redundant(first: bytes | None, second: bytes | None, size: int = ENV_SIZE) -> dict[str, str]:
    """The variables U-Boot loads from a redundant pair."""
    return decode_redundant(first, second, size)[0]


def boot_state(env: Mapping[str, str]) -> tuple[tuple[str, ...], dict[str, int]]:
    """(BOOT_ORDER slots, remaining attempts per slot) with U-Boot's defaults for missing values."""
    order = tuple(s for s in env.get("BOOT_ORDER", "A B").split() if s in {"A", "B"})
    left: dict[str, int] = {}
    for slot in ("A", "B"):
        raw = env.get(f"BOOT_{slot}_LEFT", "3")
        left[slot] = int(raw) if raw.isdigit() and len(raw) < 4 else 0
    return order, left
