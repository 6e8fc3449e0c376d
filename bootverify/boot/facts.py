"""Parsers for what the initramfs recorded: KEY=VALUE files, the kernel command line, bootconf.

All inputs are bounded; values are restricted to a safe alphabet because they came through shell.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from bootverify.boot.errors import FactsError

MAX_FACTS_BYTES = 8 * 1024
MAX_LINES = 64
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SLOT = {"A", "B"}


def parse_kv(raw: bytes, *, name: str) -> dict[str, str]:
    if len(raw) > MAX_FACTS_BYTES:
        raise FactsError(f"{name} exceeds {MAX_FACTS_BYTES} bytes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise FactsError(f"{name} is not ASCII") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > MAX_LINES:
        raise FactsError(f"{name} has more than {MAX_LINES} lines")
    out: dict[str, str] = {}
    for ln in lines:
        key, sep, value = ln.partition("=")
        if not sep or not _KEY.match(key):
            raise FactsError(f"{name}: malformed line")
        if key in out:
            raise FactsError(f"{name}: duplicate key {key}")
        if any(ord(c) < 0x20 for c in value):
            raise FactsError(f"{name}: control character in {key}")
        out[key] = value
    return out


@dataclass(frozen=True)
class ImageFacts:
    """The signed facts of the running image (image.env inside the FIT's initramfs)."""

    root_hash: str
    salt: str
    data_blocks: int
    hash_offset: int
    security_version: int
    firmware_version: str
    profile: str


def _int(d: Mapping[str, str], key: str, name: str) -> int:
    value = d.get(key)
    if value is None or not value.isdigit() or len(value) > 18:
        raise FactsError(f"{name}: {key} missing or not a non-negative integer")
    return int(value)


def image_facts(raw: bytes) -> ImageFacts:
    d = parse_kv(raw, name="image.env")
    root_hash = d.get("CAMERA_ROOT_HASH", "")
    if not _HEX64.match(root_hash):
        raise FactsError("image.env: CAMERA_ROOT_HASH is not 64 hex digits")
    salt = d.get("CAMERA_SALT", "")
    if not re.fullmatch(r"[0-9a-f]{2,512}", salt):
        raise FactsError("image.env: CAMERA_SALT is not hex")
    profile = d.get("CAMERA_PROFILE", "")
    if profile not in {"release", "dev"}:
        raise FactsError("image.env: CAMERA_PROFILE must be release or dev")
    version = d.get("CAMERA_FIRMWARE_VERSION", "")
    if not re.fullmatch(r"[A-Za-z0-9._+-]{1,64}", version):
        raise FactsError("image.env: CAMERA_FIRMWARE_VERSION malformed")
    return ImageFacts(
        root_hash=root_hash,
        salt=salt,
        data_blocks=_int(d, "CAMERA_DATA_BLOCKS", "image.env"),
        hash_offset=_int(d, "CAMERA_HASH_OFFSET", "image.env"),
        security_version=_int(d, "CAMERA_SECURITY_VERSION", "image.env"),
        firmware_version=version,
        profile=profile,
    )


@dataclass(frozen=True)
class BootFacts:
    """What the initramfs observed before hand-off (boot-facts in the tmpfs run dir)."""

    slot: str
    bootconf: str
    root_device: str
    counter: int
    verity_status: str
    initramfs_uptime_s: float | None


def boot_facts(raw: bytes) -> BootFacts:
    d = parse_kv(raw, name="boot-facts")
    slot = d.get("slot", "")
    if slot not in _SLOT:
        raise FactsError("boot-facts: slot must be A or B")
    uptime: float | None
    try:
        uptime = float(d["initramfs_uptime"]) if "initramfs_uptime" in d else None
    except ValueError:
        uptime = None
    return BootFacts(
        slot=slot,
        bootconf=d.get("bootconf", ""),
        root_device=d.get("root_device", ""),
        counter=_int(d, "counter", "boot-facts"),
        verity_status=d.get("verity_status", ""),
        initramfs_uptime_s=uptime,
    )


def cmdline_slot(cmdline: str) -> str | None:
    """The slot U-Boot's fixed bootcmd put on the command line; None if absent or ambiguous."""
    slots = {arg.split("=", 1)[1] for arg in cmdline.split() if arg.startswith("camera.slot=")}
    if len(slots) != 1:
        return None
    slot = slots.pop()
    return slot if slot in _SLOT else None


def bootconf(raw: bytes) -> str:
    """/proc/device-tree/chosen/u-boot,bootconf: a NUL-terminated configuration name."""
    if len(raw) > 256:
        raise FactsError("u-boot,bootconf too long")
    name = raw.rstrip(b"\0")
    if b"\0" in name or not re.fullmatch(rb"[A-Za-z0-9._@-]{1,64}", name):
        raise FactsError("u-boot,bootconf malformed")
    return name.decode()
