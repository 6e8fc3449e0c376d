"""U-Boot environment storage for the boot-chooser: fw_setenv's write rules over files or devices.

The image format (CRC, flags byte, ``key=value\\0`` entries) and U-Boot's choice between two
copies are the pure codec ``bootverify.boot.ubootenv``, shared with the boot stage. This module is
the I/O around it. We write the stale copy first with counter + 1, then the other with counter + 2:
at every moment one copy is intact, and once the first write is durable the new contents win - so
BOOT_ORDER and BOOT_x_LEFT always change together.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.ota.errors import OtaStateError
from agent.state import atomic_write
from bootverify.boot import ubootenv as codec
from bootverify.boot.errors import EnvCrcError, EnvError, EnvFullError

DEFAULT_ENV_SIZE = codec.ENV_SIZE
_MAX_ENV_SIZE = 1 << 20


@contextmanager
def _as_ota_error() -> Iterator[None]:
    """The codec's errors with the OTA package's stable codes."""
    try:
        yield
    except EnvCrcError as exc:
        raise OtaStateError(exc.message, code="ota.env_crc") from exc
    except EnvFullError as exc:
        raise OtaStateError(exc.message, code="ota.env_full") from exc
    except EnvError as exc:
        raise OtaStateError(exc.message, code="ota.env_corrupt") from exc


def encode(variables: Mapping[str, str], size: int, *, redundant: bool, flags: int = 0) -> bytes:
    """U-Boot's saveenv order (sorted), OTA error codes."""
    with _as_ota_error():
        return codec.encode(dict(sorted(variables.items())), size, redundant=redundant, flags=flags)


def decode(image: bytes, *, redundant: bool) -> tuple[dict[str, str], int]:
    """(variables, flags); raises OtaStateError on a bad CRC or syntax."""
    with _as_ota_error():
        return codec.decode(image, None, redundant=redundant)


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
        raws = (primary.read(self._size), redundant.read(self._size))
        if raws[0] is None and raws[1] is None:
            return None
        with _as_ota_error():
            return codec.decode_redundant(raws[0], raws[1], None)

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
