"""Size and policy limits of bundle verification, apart from the verification code.

They live in a module that imports nothing so that configuration (the agent's ``build_installer``)
can carry them without loading the CMS/ASN.1/squashfs chain: on the board that chain costs about a
second of the agent's start under TCG, and it is only needed once an update arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SIGNATURE_BYTES = 64 * 1024


@dataclass(frozen=True)
class BundleLimits:
    max_signature_bytes: int = MAX_SIGNATURE_BYTES
    max_bundle_bytes: int = 4 * 1024 * 1024 * 1024
    min_signers: int = 1
    require_crl: bool = False
