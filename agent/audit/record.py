"""The record line format and its MAC (pure functions).

A record is one JSON object on one line. The MAC is the LAST member, at a fixed distance from the
end of the line, so a verifier can check it before it parses anything:

    {"actor":...,"details":...,...,"v":1,"mac":"<64 lowercase hex>"}\\n
    `------------- body (canonical JSON without the closing brace) -'

    mac = HMAC-SHA256(key, DOMAIN || chain || body + "}")

``body`` is canonical JSON (sorted keys, no whitespace, ASCII only) of the record without ``mac``.
``chain`` is the previous record's MAC within the same segment; for the first record of a
segment it is 32 zero bytes and the record itself (``audit.genesis`` or ``audit.segment``)
carries the link to what came before inside its MACed body. That keeps every record checkable
before its body is interpreted, including the first one of a segment whose predecessor may have
been rotated away.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.audit.errors import AuditRecordInvalid

FORMAT_VERSION = 1
MAC_LEN = 32
ZERO_MAC = bytes(MAC_LEN)
RECORD_DOMAIN = b"camera-audit-record-v1\x00"
HEAD_DOMAIN = b"camera-audit-head-v1\x00"

_MAC_PREFIX = b',"mac":"'
_MAC_SUFFIX = b'"}'
_TRAILER_LEN = len(_MAC_PREFIX) + 2 * MAC_LEN + len(_MAC_SUFFIX)
_HEX = re.compile(rb"\A[0-9a-f]{64}\Z")

OUTCOMES = frozenset({"success", "failure", "denied", "info"})
EVENT_RE = re.compile(r"\A[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,4}\Z")
_EVENT_MAX = 64

# Events the log writes about itself; verification gives them meaning.
EV_GENESIS = "audit.genesis"
EV_SEGMENT = "audit.segment"
EV_ROTATE = "audit.rotate"
EV_ANCHOR = "audit.anchor"
EV_RECOVERED = "audit.recovered"
EV_TAMPER = "audit.tamper_detected"


class LineError(Exception):
    """A line is not a record (internal: the verifier turns it into AuditTampered)."""


class MacMismatch(LineError):
    """The line has the record shape but its MAC does not verify under the key and chain."""


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def compute_mac(key: bytes, domain: bytes, chain: bytes, body: bytes) -> bytes:
    return hmac.new(key, domain + chain + body, hashlib.sha256).digest()


def seal_line(key: bytes, domain: bytes, chain: bytes, obj: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """Return (line without newline, mac) for ``obj``."""
    if "mac" in obj:
        raise AuditRecordInvalid("a record must not carry its own mac member", code="audit.record_invalid")
    body = canonical_json(obj)
    mac = compute_mac(key, domain, chain, body)
    line = body[:-1] + _MAC_PREFIX + mac.hex().encode("ascii") + _MAC_SUFFIX
    if body == b"{}":
        raise AuditRecordInvalid("empty record", code="audit.record_invalid")
    return line, mac


def open_line(key: bytes, domain: bytes, chain: bytes, line: bytes) -> tuple[dict[str, Any], bytes]:
    """Check the MAC of ``line`` (no newline), THEN parse it. Raises LineError / MacMismatch."""
    if len(line) < _TRAILER_LEN + 2 or not line.startswith(b"{"):
        raise LineError("not a record line")
    if (
        not line.endswith(_MAC_SUFFIX)
        or line[-_TRAILER_LEN : -_TRAILER_LEN + len(_MAC_PREFIX)] != _MAC_PREFIX
    ):
        raise LineError("record has no trailing mac member")
    mac_hex = line[-_TRAILER_LEN + len(_MAC_PREFIX) : -len(_MAC_SUFFIX)]
    if not _HEX.match(mac_hex):
        raise LineError("mac is not 64 lowercase hex digits")
    mac = bytes.fromhex(mac_hex.decode("ascii"))
    body = line[:-_TRAILER_LEN] + b"}"
    if not hmac.compare_digest(compute_mac(key, domain, chain, body), mac):
        raise MacMismatch("mac does not verify")
    try:
        obj = json.loads(body)
    except ValueError as exc:  # authentic but unparsable cannot come from our writer
        raise LineError("authenticated body is not JSON") from exc
    if not isinstance(obj, dict):
        raise LineError("authenticated body is not an object")
    return obj, mac


def format_time(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-24T02:16:34.123Z."""
    ms_total = round(ts * 1000)
    dt = datetime.fromtimestamp(ms_total // 1000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms_total % 1000:03d}Z"


def check_event(event: str, outcome: str) -> None:
    if not isinstance(event, str) or len(event) > _EVENT_MAX or not EVENT_RE.match(event):
        raise AuditRecordInvalid(f"invalid audit event name {event!r}", code="audit.record_invalid")
    if outcome not in OUTCOMES:
        raise AuditRecordInvalid(f"invalid audit outcome {outcome!r}", code="audit.record_invalid")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One verified (or just written) record."""

    seq: int
    segment: int
    event: str
    outcome: str
    time: str
    fields: Mapping[str, Any]
    line: bytes  # exact bytes on disk, without the newline
    mac: bytes

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], line: bytes, mac: bytes) -> AuditRecord:
        """A record from members that already passed the MAC and schema checks."""
        return cls(seq=fields["seq"], segment=fields["seg"], event=fields["event"],
                   outcome=fields["outcome"], time=fields["time"], fields=fields, line=line, mac=mac)

    @property
    def mac_hex(self) -> str:
        return self.mac.hex()
