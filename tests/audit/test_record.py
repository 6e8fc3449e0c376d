"""The record line codec: MAC checked before parsing, canonical bodies, RFC 3339 times."""

from __future__ import annotations

import json

import pytest

from agent.audit.errors import AuditRecordInvalid
from agent.audit.record import (
    RECORD_DOMAIN,
    ZERO_MAC,
    LineError,
    MacMismatch,
    check_event,
    compute_mac,
    format_time,
    open_line,
    seal_line,
)

KEY = b"\x11" * 32


def test_round_trip_and_json_shape() -> None:
    obj = {"seq": 1, "event": "auth.login", "details": {"ü": "x\ny"}}
    line, mac = seal_line(KEY, RECORD_DOMAIN, ZERO_MAC, obj)
    assert b"\n" not in line and line.isascii()
    parsed = json.loads(line)
    assert parsed["mac"] == mac.hex() and parsed["details"] == {"ü": "x\ny"}
    back, mac2 = open_line(KEY, RECORD_DOMAIN, ZERO_MAC, line)
    assert back == obj and mac2 == mac


def test_chain_value_is_bound() -> None:
    line, mac = seal_line(KEY, RECORD_DOMAIN, ZERO_MAC, {"a": 1})
    with pytest.raises(MacMismatch):
        open_line(KEY, RECORD_DOMAIN, mac, line)


def test_domain_separates_heads_from_records() -> None:
    line, _ = seal_line(KEY, b"camera-audit-head-v1\x00", b"", {"a": 1})
    with pytest.raises(MacMismatch):
        open_line(KEY, RECORD_DOMAIN, b"", line)


def test_mac_is_checked_before_the_body_is_parsed() -> None:
    # An authentic (correctly MACed) body that is not JSON: only after the MAC passes does the
    # parser run and complain; with a wrong MAC the same bytes never reach the parser.
    body = b'{"a":[1,2}'
    mac = compute_mac(KEY, RECORD_DOMAIN, ZERO_MAC, body)
    line = body[:-1] + b',"mac":"' + mac.hex().encode() + b'"}'
    with pytest.raises(LineError) as info:
        open_line(KEY, RECORD_DOMAIN, ZERO_MAC, line)
    assert not isinstance(info.value, MacMismatch)
    with pytest.raises(MacMismatch):
        open_line(b"\x22" * 32, RECORD_DOMAIN, ZERO_MAC, line)


@pytest.mark.parametrize(
    "line",
    [b"", b"{}", b"not json at all but long enough to hold a mac trailer ........................",
     b'{"a":1,"mac":"' + b"A" * 64 + b'"}', b'{"a":1,"mac":"' + b"0" * 63 + b'"}', b'{"a":1}' + b" " * 80],
)
def test_malformed_lines(line: bytes) -> None:
    with pytest.raises(LineError):
        open_line(KEY, RECORD_DOMAIN, ZERO_MAC, line)


def test_record_cannot_smuggle_a_mac_member() -> None:
    with pytest.raises(AuditRecordInvalid):
        seal_line(KEY, RECORD_DOMAIN, ZERO_MAC, {"mac": "x"})


@pytest.mark.parametrize(("ts", "text"), [
    (0.0, "1970-01-01T00:00:00.000Z"),
    (1_790_000_000.1234, "2026-09-21T14:13:20.123Z"),
    (1_790_000_000.9996, "2026-09-21T14:13:21.000Z"),
])
def test_time_format(ts: float, text: str) -> None:
    assert format_time(ts) == text


@pytest.mark.parametrize(("event", "outcome"), [
    ("Auth.Login", "success"), ("auth..login", "success"), ("auth.login", "ok"), ("", "info"),
    ("a" * 65, "info"), ("auth.login\n", "info"), ("auth login", "info"),
])
def test_invalid_events_are_refused(event: str, outcome: str) -> None:
    with pytest.raises(AuditRecordInvalid):
        check_event(event, outcome)


def test_valid_event_names() -> None:
    for ev in ("claim", "auth.login", "firmware.install_start", "talk.refused", "factory.reset"):
        check_event(ev, "info")
