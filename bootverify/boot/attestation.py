"""The boot attestation record: a pure verdict over the evidence the boot left behind.

Green only on positive evidence: dm-verity reports the rootfs verified with the signed root hash,
the kernel was started by the verifying U-Boot (u-boot,bootconf present and the one recorded), the
slot on the command line is the slot whose rootfs was opened, the image is not a rollback, and it
is a release image booted from the preferred slot. Missing evidence is never read as success.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bootverify.boot.facts import BootFacts, ImageFacts

SCHEMA = 1
GREEN, YELLOW, RED = "green", "yellow", "red"


@dataclass(frozen=True)
class Evidence:
    image: ImageFacts | None
    boot: BootFacts | None
    cmdline_slot: str | None
    kernel_bootconf: str | None
    verity_status: str | None  # from the kernel now ("verified" / "corrupted" / None)
    counter: int | None
    boot_order: tuple[str, ...] | None = None
    boot_left: Mapping[str, int] | None = None
    fit_sha256: str | None = None
    problems: tuple[str, ...] = field(default_factory=tuple)  # codes of evidence that failed to load


def evaluate(ev: Evidence, *, now: float) -> dict[str, Any]:
    red: list[str] = list(ev.problems)
    yellow: list[str] = []
    img, boot = ev.image, ev.boot
    if img is None:
        red.append("boot.image_facts_missing")
    if boot is None:
        red.append("boot.boot_facts_missing")
    if ev.verity_status != "verified":
        red.append("boot.verity_not_verified")
    if boot is not None and boot.verity_status != "verified":
        red.append("boot.verity_not_verified_at_handoff")
    if not ev.kernel_bootconf:
        red.append("boot.no_bootconf")
    elif boot is not None and boot.bootconf != ev.kernel_bootconf:
        red.append("boot.bootconf_mismatch")
    if ev.cmdline_slot is None:
        red.append("boot.no_slot")
    elif boot is not None and boot.slot != ev.cmdline_slot:
        red.append("boot.slot_mismatch")
    if ev.counter is None:
        red.append("boot.counter_unreadable")
    elif img is not None and img.security_version < ev.counter:
        red.append("boot.rollback")
    if img is not None and img.profile != "release":
        yellow.append("boot.dev_profile")
    fallback = False
    if ev.boot_order is None:
        yellow.append("boot.env_unreadable")
    elif ev.cmdline_slot is not None and (not ev.boot_order or ev.boot_order[0] != ev.cmdline_slot):
        fallback = True
        yellow.append("boot.fallback")
    result = RED if red else YELLOW if yellow else GREEN
    return {
        "schema": SCHEMA,
        "time": now,
        "result": result,
        "reasons": sorted(set(red)) + sorted(set(yellow)),
        "slot": ev.cmdline_slot,
        "fit_configuration": ev.kernel_bootconf,
        "firmware_version": img.firmware_version if img else None,
        "security_version": img.security_version if img else None,
        "anti_rollback_counter": ev.counter,
        "profile": img.profile if img else None,
        "rootfs_root_hash": img.root_hash if img else None,
        "verity_status": ev.verity_status,
        "firmware_sha256": ev.fit_sha256,
        "boot_order": list(ev.boot_order) if ev.boot_order is not None else None,
        "boot_attempts_left": dict(ev.boot_left) if ev.boot_left is not None else None,
        "fallback": fallback,
        "initramfs_uptime_s": boot.initramfs_uptime_s if boot else None,
    }


def fit_total_size(header: bytes) -> int:
    """Total size of a FIT (flattened device tree) from its 40-byte header."""
    if len(header) < 8 or header[:4] != b"\xd0\x0d\xfe\xed":
        raise ValueError("not a FIT / device tree")
    return int.from_bytes(header[4:8], "big")
