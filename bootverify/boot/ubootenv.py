"""The U-Boot environment image (fw_setenv / mkenvimage format, no redundancy).

Layout: CRC32 (little-endian) of the data area, [a flags byte in redundant mode], then
``name=value\\0`` entries ending in an empty entry, zero-padded to ENV_SIZE. On the reference board
the two copies are the files ``uboot.env`` and ``uboot.env.redund`` on GPT partition 1 (FAT), and
ENV_SIZE is 0x4000 (board/uboot/hardened.config). U-Boot loads the copy with a good CRC and, when
both are good, the one with the newer flags counter; it honours only BOOT_ORDER, BOOT_A_LEFT and
BOOT_B_LEFT from it and ignores everything else at import.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

from bootverify.boot.errors import EnvError

ENV_SIZE = 0x4000
WRITEABLE = ("BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT")


def parse_env(raw: bytes, size: int = ENV_SIZE, *, redundant: bool = False) -> dict[str, str]:
    return _parse(raw, size, redundant)[0]


def _parse(raw: bytes, size: int, redundant: bool) -> tuple[dict[str, str], int]:
    if len(raw) != size:
        raise EnvError(f"environment is {len(raw)} bytes, expected {size}")
    (crc,) = struct.unpack_from("<I", raw, 0)
    header = 5 if redundant else 4
    flags = raw[4] if redundant else 0
    data = raw[header:]
    if zlib.crc32(data) != crc:
        raise EnvError("environment CRC mismatch")
    out: dict[str, str] = {}
    for entry in data.split(b"\0"):
        if not entry:
            break
        name, sep, value = entry.partition(b"=")
        if not sep or not name:
            raise EnvError("malformed environment entry")
        try:
            out[name.decode("ascii")] = value.decode("ascii")
        except UnicodeDecodeError as exc:
            raise EnvError("non-ASCII environment entry") from exc
    return out, flags


def pick_redundant(first: bytes | None, second: bytes | None, size: int = ENV_SIZE) -> dict[str, str]:
    """U-Boot's env_import_redund rule: a good CRC wins; of two good copies the newer flags
    counter (with 255 -> 0 wrap-around) wins."""
    parsed: list[tuple[dict[str, str], int]] = []
    for raw in (first, second):
        if raw is None:
            continue
        try:
            parsed.append(_parse(raw, size, True))
        except EnvError:
            continue
    if not parsed:
        raise EnvError("no valid environment copy")
    if len(parsed) == 1:
        return parsed[0][0]
    (e1, f1), (e2, f2) = parsed
    if f1 == 255 and f2 == 0:
        return e2
    if f2 == 255 and f1 == 0:
        return e1
    return e1 if f1 >= f2 else e2


def build_env(values: Mapping[str, str], size: int = ENV_SIZE, *, flags: int | None = None) -> bytes:
    """One environment copy; ``flags`` given = redundant format with that counter byte."""
    header = 4 if flags is None else 5
    body = b"".join(f"{k}={v}".encode("ascii") + b"\0" for k, v in values.items()) + b"\0"
    if len(body) > size - header:
        raise EnvError("environment does not fit")
    data = body + b"\0" * (size - header - len(body))
    extra = b"" if flags is None else bytes([flags & 0xFF])
    return struct.pack("<I", zlib.crc32(data)) + extra + data


def boot_state(env: Mapping[str, str]) -> tuple[tuple[str, ...], dict[str, int]]:
    """(BOOT_ORDER slots, remaining attempts per slot) with U-Boot's defaults for missing values."""
    order = tuple(s for s in env.get("BOOT_ORDER", "A B").split() if s in {"A", "B"})
    left: dict[str, int] = {}
    for slot in ("A", "B"):
        raw = env.get(f"BOOT_{slot}_LEFT", "3")
        left[slot] = int(raw) if raw.isdigit() and len(raw) < 4 else 0
    return order, left
