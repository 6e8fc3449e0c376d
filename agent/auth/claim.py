"""The first-boot claim: a one-time, per-device setup code creates the first admin.

The code has 100 bits from the kernel RNG (20 Crockford base32 characters, shown grouped as
XXXXX-XXXXX-XXXXX-XXXXX). The device keeps only HMAC-SHA256(device key, code): with 100 bits of
entropy a keyed fast hash is enough, and a copy of claim.json without the device secret cannot
even be used to test guesses offline. After a successful claim the hash is erased.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from agent.devicesecret import DeviceSecretProvider
from agent.errors import AgentError
from agent.state import StateDir, atomic_write, atomic_write_json, read_json

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
_READ_AS = str.maketrans("OIL", "011")
CODE_CHARS = 20  # 20 x 5 bits = 100 bits
PURPOSE = "setup-code"


class ClaimError(AgentError):
    code = "claim.failed"
    status = 403


def generate_setup_code() -> str:
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(CODE_CHARS))
    return "-".join(raw[i : i + 5] for i in range(0, CODE_CHARS, 5))


def normalize_code(code: str) -> str:
    cleaned = code.upper().replace("-", "").replace(" ", "")
    # Crockford decoding rules: people read O as 0 and I/L as 1.
    return cleaned.translate(_READ_AS)


def code_hash(secret: DeviceSecretProvider, code: str) -> str:
    return hmac.new(secret.derive(PURPOSE), normalize_code(code).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ClaimState:
    """``code_hash`` is the hash of the label's code. While ``claimed`` it is dormant: the code
    is void until a factory reset makes the device claimable again with the same label (the
    owner of the physical label can always recover the device, nobody else can)."""

    claimed: bool
    code_hash: str | None


def load(state: StateDir) -> ClaimState:
    try:
        doc = read_json(state.claim_file, max_bytes=4096)
    except FileNotFoundError:
        return ClaimState(False, None)
    return ClaimState(bool(doc.get("claimed")), doc.get("code_hash"))


def _write(state: StateDir, claimed: bool, hashed: str | None) -> None:
    atomic_write_json(state.claim_file, {"claimed": claimed, "code_hash": hashed})


def install_setup_code(state: StateDir, secret: DeviceSecretProvider, code: str) -> None:
    """Store only the keyed hash of ``code`` (used by host mode and by the factory flow)."""
    _write(state, False, code_hash(secret, code))


def install_setup_code_hash(state: StateDir, hashed: str) -> None:
    _write(state, False, hashed)


def unclaim(state: StateDir) -> None:
    """Factory reset of user data: claimable again with the label's code."""
    _write(state, False, load(state).code_hash)


def check_code(state: StateDir, secret: DeviceSecretProvider, presented: object) -> None:
    current = load(state)
    if current.claimed:
        raise ClaimError("device is already claimed", code="claim.already_claimed", status=409)
    if current.code_hash is None:
        raise ClaimError("device has no setup code (not provisioned)", code="claim.not_available", status=409)
    if not isinstance(presented, str) or len(presented) > 64:
        raise ClaimError("wrong setup code", code="claim.bad_code")
    if not hmac.compare_digest(code_hash(secret, presented), current.code_hash):
        raise ClaimError("wrong setup code", code="claim.bad_code")


def mark_claimed(state: StateDir) -> None:
    _write(state, True, load(state).code_hash)
    # The host-mode copy of the code is void now; remove it so it cannot be mistaken for valid.
    state.setup_code_file.unlink(missing_ok=True)


def ensure_host_setup_code(state: StateDir, secret: DeviceSecretProvider) -> str | None:
    """Host mode: create the code once if the device has none; return it only when newly made."""
    if state.claim_file.exists():
        return None
    code = generate_setup_code()
    atomic_write(state.setup_code_file, (code + "\n").encode(), 0o600)
    install_setup_code(state, secret, code)
    return code
