"""One error hierarchy for bootverify. Every error carries a stable code for the audit log.

Callers that face an attacker (the installer's API, the boot stage) show one opaque refusal and put
``code`` and ``message`` (the precise reason) only in the audit log.
"""

from __future__ import annotations


class BootVerifyError(Exception):
    code: str = "bootverify.error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BundleFormatError(BootVerifyError):
    """The bundle's framing is wrong: truncated, trailing bytes, sizes that do not add up."""

    code = "bundle.format"


class SignatureError(BootVerifyError):
    """The CMS signature, its chain, purpose, validity period or revocation status failed."""

    code = "bundle.signature_invalid"


class ManifestError(BootVerifyError):
    """The (signed) manifest does not parse or lacks what the verity format needs."""

    code = "bundle.manifest_invalid"


class VerityError(BootVerifyError):
    """A payload block or hash block does not match the signed dm-verity root hash."""

    code = "bundle.verity_mismatch"


class PayloadError(BootVerifyError):
    """The verified payload (squashfs) is malformed or an image is missing or mismatched."""

    code = "bundle.payload_invalid"


class PolicyError(BootVerifyError):
    """A validly signed bundle that this device must not install (model, version, rollback)."""

    code = "bundle.policy"


class ReleaseError(BootVerifyError):
    """Release-side tooling failed (PKI, bundling)."""

    code = "release.error"
