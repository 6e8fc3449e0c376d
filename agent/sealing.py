"""Encryption at rest for password-equivalent secrets and private keys (AES-256-GCM).

Keys come from ``DeviceSecretProvider.derive(purpose)``; the associated data binds a ciphertext to
what it belongs to (e.g. ``b"digest:alice:realm"``) so a sealed blob cannot be moved to another
record. Format: b"S1" || nonce(12) || ciphertext+tag.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.errors import StateError

_MAGIC = b"S1"


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return _MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < 2 + 12 + 16 or blob[:2] != _MAGIC:
        raise StateError("sealed blob is malformed", code="state.sealed_malformed")
    try:
        return AESGCM(key).decrypt(blob[2:14], blob[14:], aad)
    except InvalidTag as exc:
        raise StateError("sealed blob failed authentication", code="state.sealed_tampered") from exc
