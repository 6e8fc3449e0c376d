"""The anti-rollback counter of the reference board.

On hardware this is a monotonic counter in OTP fuses or eMMC RPMB; the board simulates it with a
file next to the simulated OTP secret (StateDir.otp_dir / "security-version"). It only ever goes
up: `raise_to` refuses to lower it, and the initramfs refuses to hand off to an image whose signed
security version is below it. Limitation of the simulation: whoever can write the data partition
offline can reset the file; real fuses cannot be reset.
"""

from __future__ import annotations

from pathlib import Path

from bootverify.boot.errors import CounterError, RollbackError

COUNTER_FILE = "security-version"
MAX_COUNTER = 2**31 - 1


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


def read_counter(otp_dir: Path) -> int:
    """A missing counter is a factory-fresh device (0)."""
    try:
        raw = counter_path(otp_dir).read_bytes()[:64]
    except FileNotFoundError:
        return 0
    return parse_counter(raw)


def check(image_security_version: int, counter: int) -> None:
    if image_security_version < counter:
        raise RollbackError(
            f"image security version {image_security_version} is below the anti-rollback counter {counter}"
        )


def raise_to(otp_dir: Path, value: int) -> int:
    """Raise the counter to ``value`` (never lowers it). Returns the counter afterwards."""
    from agent.state import atomic_write, ensure_dir

    if value < 0 or value > MAX_COUNTER:
        raise CounterError("counter value out of range")
    current = read_counter(otp_dir)
    if value <= current:
        return current
    ensure_dir(otp_dir)
    atomic_write(counter_path(otp_dir), f"{value}\n".encode())
    return value
