"""Slots (where images go) and how the running system knows which slot it booted.

Backends:
- ``FileSlots``: host mode and tests; ``<ota_dir>/slots/A.img`` and ``B.img`` (0600).
- ``DeviceSlots``: the QEMU board's partitions (e.g. /dev/vda2, /dev/vda3); never created or
  truncated, the image must fit.
Booted slot: host mode reads ``<ota_dir>/booted`` (written by ``camera-agent ota boot``, the
simulated bootloader); on the device the bootloader passes ``rauc.slot=A`` (RAUC's convention) or
``camera.slot=A`` on the kernel command line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from agent.ota.bootchooser import SLOTS
from agent.ota.errors import OtaError, OtaStateError
from agent.state import atomic_write, ensure_dir

_CLASS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class SlotWriter(Protocol):
    def writev(self, chunks: Sequence[bytes | memoryview]) -> None:
        """Append ``chunks`` in order (one ``writev``: one syscall, one GIL release for many
        squashfs blocks). The caller may reuse the chunks' memory once this returns."""

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class SlotStore(Protocol):
    """Where each slot class (``rootfs``, ``fit``, ...) of slot A/B lives."""

    def open_for_write(self, slot: str, size: int, slotclass: str = "rootfs") -> SlotWriter: ...

    def path(self, slot: str, slotclass: str = "rootfs") -> Path: ...


def _write_all(fd: int, chunks: Sequence[bytes | memoryview], size: int) -> None:
    """``writev`` until every byte is written (a regular file takes it all in one call; a block
    device or a signal may stop short)."""
    n = os.writev(fd, chunks)
    if n == size:
        return
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        view = memoryview(chunk)[n:]
        n = 0
        while view:
            view = view[os.write(fd, view) :]


class _FdWriter:
    # Start writeback every 8 MiB instead of leaving it all to the final fsync: without this the
    # page cache absorbs the whole image (dirty_background_ratio of a big RAM) and the disk only
    # starts working after the last block was verified. FADV_DONTNEED on dirty pages starts async
    # writeback without waiting but cannot drop them; the same call over the previous window, clean
    # by then, drops that one, and after the fsync the whole image is dropped: an install must not
    # push the running system's pages out of a camera's small RAM (measured with fincore: 256 MiB
    # of the slot image stayed cached before, none after).
    KICK = 8 * 1024 * 1024

    def __init__(self, fd: int, limit: int, truncate: bool) -> None:
        self._fd = fd
        self._limit = limit
        self._written = 0
        self._kicked = 0
        self._truncate = truncate

    def writev(self, chunks: Sequence[bytes | memoryview]) -> None:
        size = sum(map(len, chunks))
        if self._written + size > self._limit:
            raise OtaError("image larger than the slot", code="ota.slot_too_small")
        if size:
            _write_all(self._fd, chunks, size)
        self._written += size
        if self._written - self._kicked >= self.KICK:
            start = max(0, self._kicked - self.KICK)
            os.posix_fadvise(self._fd, start, self._written - start, os.POSIX_FADV_DONTNEED)
            self._kicked = self._written

    def finish(self) -> None:
        try:
            if self._truncate:
                os.ftruncate(self._fd, self._written)
            os.fsync(self._fd)
            os.posix_fadvise(self._fd, 0, self._written, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        os.close(self._fd)


class FileSlots:
    def __init__(self, ota_dir: Path, max_slot_bytes: int = 8 * 1024**3) -> None:
        self._dir = ota_dir / "slots"
        self._max = max_slot_bytes

    def path(self, slot: str, slotclass: str = "rootfs") -> Path:
        if slot not in SLOTS or not _CLASS_RE.match(slotclass):
            raise OtaStateError(f"unknown slot {slot!r}/{slotclass!r}", code="ota.unknown_slot")
        # rootfs keeps the plain name (A.img) so host-mode tools and docs stay simple.
        return self._dir / (f"{slot}.img" if slotclass == "rootfs" else f"{slot}-{slotclass}.img")

    def open_for_write(self, slot: str, size: int, slotclass: str = "rootfs") -> SlotWriter:
        if size > self._max:
            raise OtaError("image larger than the slot", code="ota.slot_too_small")
        ensure_dir(self._dir)
        fd = os.open(self.path(slot, slotclass), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        return _FdWriter(fd, size, truncate=True)


class DeviceSlots:
    """``{"A": {"rootfs": /dev/vda4, "fit": /dev/vda2}, "B": {...}}`` - partitions, never resized."""

    def __init__(self, devices: dict[str, dict[str, Path]]) -> None:
        if set(devices) != set(SLOTS) or set(devices["A"]) != set(devices["B"]):
            raise OtaStateError("device slots must name A and B with the same classes", code="ota.slot_config")
        self._devices = devices

    def path(self, slot: str, slotclass: str = "rootfs") -> Path:
        try:
            return self._devices[slot][slotclass]
        except KeyError as exc:
            raise OtaStateError(f"unknown slot {slot!r}/{slotclass!r}", code="ota.unknown_slot") from exc

    def open_for_write(self, slot: str, size: int, slotclass: str = "rootfs") -> SlotWriter:
        fd = os.open(self.path(slot, slotclass), os.O_WRONLY | os.O_CLOEXEC)
        capacity = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        if size > capacity:
            os.close(fd)
            raise OtaError("image larger than the slot", code="ota.slot_too_small")
        return _FdWriter(fd, size, truncate=False)


class BootedSlotSource(Protocol):
    def booted(self) -> str: ...


class FileBootedSlot:
    """Host mode: the simulated bootloader records its choice here."""

    def __init__(self, ota_dir: Path) -> None:
        self.path = ota_dir / "booted"

    def booted(self) -> str:
        try:
            raw = self.path.read_bytes()[:8].decode(errors="replace").strip()
        except FileNotFoundError:
            return "A"
        if raw not in SLOTS:
            raise OtaStateError("booted-slot record is corrupt", code="ota.booted_corrupt")
        return raw

    def record(self, slot: str) -> None:
        atomic_write(self.path, slot.encode() + b"\n")


class CmdlineBootedSlot:
    def __init__(self, cmdline: Path = Path("/proc/cmdline")) -> None:
        self._cmdline = cmdline

    def booted(self) -> str:
        text = self._cmdline.read_bytes()[:4096].decode(errors="replace")
        for arg in text.split():
            key, _, value = arg.partition("=")
            if key in ("rauc.slot", "camera.slot") and value in SLOTS:
                return value
        raise OtaStateError("kernel command line names no boot slot", code="ota.booted_unknown")
