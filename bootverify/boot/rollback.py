"""The anti-rollback counter: its rule, its on-disk format and the simulated-OTP file store.

One implementation for the boot stage (the initramfs refuses to hand off to an image whose signed
security version is below the counter; the attestation reads it) and the OTA installer
(agent.ota.antirollback wraps ``read_counter`` / ``raise_to`` and raises it after mark-good).

On hardware the counter is OTP fuses, an eMMC RPMB counter or a TPM NV counter; the board simulates
it with ``StateDir.otp_dir / "security-version"`` (decimal, 0600, atomically replaced). It only
ever goes up: ``raise_to`` never lowers it. A corrupt store is an error (fail closed), never
"counter = 0". Limitation of the simulation: whoever can write the data partition offline can reset
the file; real fuses cannot be reset.
"""

from __future__ import annotations

from pathlib import Path

from bootverify.boot.errors import CounterError, RollbackError
from bootverify.fsutil import atomic_write, read_regular

COUNTER_FILE = "security-version"
MAX_COUNTER = 2**31 - 1
_MAX_FILE = 64


def counter_path(otp_dir: Path) -> Path:
    return otp_dir / COUNTER_FILE


def parse_counter(raw: bytes) -> int:
    text = raw.strip()
    if not text.isdigit() or len(text) > 10:
        raise CounterError("anti-rollback counter unreadable")
    value = int(text)
    if value > MAX_COUNTER:
        raise CounterError("anti-rollback counter out of range")
    return value


def render_counter(value: int) -> bytes:
    if not 0 <= value <= MAX_COUNTER:
        raise CounterError("counter value out of range")
    return f"{value}\n".encode()


def check(image_security_version: int, counter: int) -> None:
    """An image below the counter must not install or boot."""
    if image_security_version < counter:
        raise RollbackError(
            f"image security version {image_security_version} is below the anti-rollback counter {counter}"
        )


def read_counter(otp_dir: Path) -> int:
    """A missing counter is a factory-fresh device (0)."""
    try:
        raw = read_regular(counter_path(otp_dir), _MAX_FILE + 1)
    except FileNotFoundError:
        return 0
    except OSError as exc:  # a symlink, FIFO or device where the counter belongs: tampering
        raise CounterError(f"anti-rollback counter unreadable ({exc.strerror})") from exc
    if len(raw) > _MAX_FILE:
        raise CounterError("anti-rollback counter unreadable")
    return parse_counter(raw)


def raise_to(otp_dir: Path, value: int, *, group: int | None = None) -> int:
    """Raise the counter to ``value`` (never lowers it). Returns the counter afterwards.

    ``group``: the board's root writes the counter readable (0640), not writable, by the agent's
    group (bootverify.boot.otp); without it the file is private to its writer (host mode)."""
    new = render_counter(value)
    current = read_counter(otp_dir)
    if value <= current:
        return current
    otp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(counter_path(otp_dir), new, 0o600 if group is None else 0o640, group=group)
    return value
