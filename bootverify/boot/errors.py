"""Errors of the boot stage. Codes are stable and go to the audit log / attestation record."""

from __future__ import annotations

from bootverify.errors import BootVerifyError


class BootStageError(BootVerifyError):
    code = "boot.error"


class FactsError(BootStageError):
    """A boot-facts or image-facts file is missing, oversized or malformed."""

    code = "boot.facts_invalid"


class RollbackError(BootStageError):
    """The image's security version is below the device's anti-rollback counter."""

    code = "boot.rollback_refused"


class CounterError(BootStageError):
    """The anti-rollback counter store is unreadable or a write would lower it."""

    code = "boot.counter_invalid"


class EnvError(BootStageError):
    """The U-Boot environment image is malformed (size, encoding) or a variable cannot be stored."""

    code = "boot.env_invalid"


class EnvCrcError(EnvError):
    """A copy's CRC does not match (torn write, damage), or no copy is valid."""

    code = "boot.env_crc"


class EnvFullError(EnvError):
    """The variables do not fit the environment size."""

    code = "boot.env_full"


class FirewallError(BootStageError):
    """The outbound allow-list cannot be turned into rules (bad host, resolution failure)."""

    code = "boot.firewall_invalid"


class OtpError(BootStageError):
    """The simulated OTP directory or one of its files is not what root left there (tampering)."""

    code = "boot.otp_invalid"
