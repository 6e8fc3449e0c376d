"""Audit records as RFC 5424 syslog messages, framed for RFC 5425 (TLS) by octet counting.

    <PRI>1 TIMESTAMP HOSTNAME camera-agent - MSGID [audit@32473 seq=".." ...] BOM{record line}

Facility 13 ("log audit"); severity from the outcome. MSGID is the event name. The MSG part is
the record line exactly as stored, MAC included, so a collector holding the key can re-verify
the chain. 32473 is the private enterprise number RFC 5612 reserves for documentation: an OEM
replaces it with its own (``SD_ID``).
"""

from __future__ import annotations

import re

from agent.audit.record import AuditRecord

SD_ID = "audit@32473"
APP_NAME = "camera-agent"
FACILITY_LOG_AUDIT = 13
_SEVERITY = {"success": 6, "info": 6, "failure": 5, "denied": 4}
_BOM = b"\xef\xbb\xbf"
_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _header_token(value: str, max_len: int) -> str:
    token = _PRINTUSASCII.sub("_", value)[:max_len]
    return token or "-"


def _param_value(value: str) -> str:
    # RFC 5424 6.3.3: inside PARAM-VALUE, '"', '\' and ']' MUST be escaped.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_message(rec: AuditRecord, hostname: str) -> bytes:
    pri = FACILITY_LOG_AUDIT * 8 + _SEVERITY.get(rec.outcome, 6)
    f = rec.fields
    params = [("seq", str(rec.seq)), ("outcome", rec.outcome)]
    for name in ("actor", "source", "target"):
        v = f.get(name)
        if isinstance(v, str):
            params.append((name, v))
    params.append(("log", str(f.get("log", ""))))
    params.append(("mac", rec.mac_hex))
    sd = "[" + SD_ID + "".join(f' {k}="{_param_value(v)}"' for k, v in params) + "]"
    host = _header_token(hostname, 255)
    msgid = _header_token(rec.event, 32)
    header = f"<{pri}>1 {rec.time} {host} {APP_NAME} - {msgid} {sd} "
    return header.encode("utf-8") + _BOM + rec.line


def frame(message: bytes) -> bytes:
    """RFC 5425 section 4.3: MSG-LEN SP SYSLOG-MSG (no trailer)."""
    return str(len(message)).encode("ascii") + b" " + message


def render(rec: AuditRecord, fmt: str, hostname: str) -> bytes:
    """One export line: the stored record (``jsonl``) or its RFC 5424 message (``rfc5424``)."""
    if fmt == "rfc5424":
        return format_message(rec, hostname) + b"\n"
    return rec.line + b"\n"
