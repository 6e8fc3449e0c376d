"""RTSP framing: valid, truncated and hostile input, plus a property-based fuzz of the parser."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.rtsp.config import RtspConfig
from agent.rtsp.errors import HeaderTooLarge, ParseError, TooLarge
from agent.rtsp.message import Interleaved, Request, RequestParser, Response

CFG = RtspConfig()
OPTIONS = b"OPTIONS rtsps://cam:322/main RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: x\r\n\r\n"


def feed(data: bytes, cfg: RtspConfig = CFG) -> list[Request | Interleaved]:
    return RequestParser(cfg).feed(data)


def test_request_parsed_with_lowercase_headers() -> None:
    [req] = feed(OPTIONS)
    assert isinstance(req, Request)
    assert (req.method, req.uri, req.cseq) == ("OPTIONS", "rtsps://cam:322/main", 1)
    assert req.header("USER-AGENT") == "x"


def test_byte_by_byte_equals_whole() -> None:
    msg = OPTIONS + b"$\x01\x00\x03abc" + b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 2\r\nContent-Length: 4\r\n\r\nabcd"
    p = RequestParser(CFG)
    events: list[Request | Interleaved] = []
    for i in range(len(msg)):
        events += p.feed(msg[i : i + 1])
    assert events == feed(msg)
    assert [type(e).__name__ for e in events] == ["Request", "Interleaved", "Request"]
    assert events[1] == Interleaved(1, b"abc")
    assert isinstance(events[2], Request) and events[2].body == b"abcd"
    assert p.buffered == 0


@pytest.mark.parametrize("cut", [1, 10, len(OPTIONS) - 1])
def test_truncated_request_waits(cut: int) -> None:
    p = RequestParser(CFG)
    assert p.feed(OPTIONS[:cut]) == []
    assert p.buffered > 0
    assert len(p.feed(OPTIONS[cut:])) == 1


def test_missing_cseq_is_reported_not_fatal() -> None:
    [req] = feed(b"OPTIONS * RTSP/1.0\r\n\r\n")
    assert isinstance(req, Request) and req.cseq is None
    [req] = feed(b"OPTIONS * RTSP/1.0\r\nCSeq: -3\r\n\r\n")
    assert isinstance(req, Request) and req.cseq is None


ATTACKS = [
    # (name, bytes, error class, status)
    ("header block too large", b"OPTIONS * RTSP/1.0\r\nX: " + b"a" * 9000, HeaderTooLarge, 431),
    ("too many headers", b"OPTIONS * RTSP/1.0\r\n" + b"X: y\r\n" * 60 + b"\r\n", HeaderTooLarge, 431),
    ("request line too long", b"OPTIONS /" + b"a" * 3000, HeaderTooLarge, 431),
    ("body too large", b"ANNOUNCE * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 999999\r\n\r\n", TooLarge, 413),
    ("negative length", b"ANNOUNCE * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: -1\r\n\r\n", ParseError, 400),
    ("interleaved too large", b"$\x00\xff\xff", TooLarge, 413),
    ("http version", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ParseError, 505),
    ("two spaces", b"OPTIONS  * RTSP/1.0\r\nCSeq: 1\r\n\r\n", ParseError, 400),
    ("folded header", b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n continued\r\n\r\n", ParseError, 400),
    ("no colon", b"OPTIONS * RTSP/1.0\r\nCSeq 1\r\n\r\n", ParseError, 400),
    ("control char", b"OPTIONS * RTSP/1.0\r\nCSeq: 1\x00\r\n\r\n", ParseError, 400),
    ("non-ascii", b"OPTIONS * RTSP/1.0\r\nX: \xff\r\n\r\n", ParseError, 400),
    ("duplicate cseq", b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nCSeq: 2\r\n\r\n", ParseError, 400),
    ("tls client hello", bytes.fromhex("16030100f1010000ed0303") + b"\x00" * 40, ParseError, 400),
]


@pytest.mark.parametrize(("name", "data", "err", "status"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_table(name: str, data: bytes, err: type[Exception], status: int) -> None:
    with pytest.raises(err) as info:
        feed(data)
    assert getattr(info.value, "status", None) == status


def test_response_serialization_and_header_injection() -> None:
    raw = Response(200, body=b"v=0\r\n").add("CSeq", "3").serialize()
    assert raw.startswith(b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nContent-Length: 5\r\n\r\nv=0")
    with pytest.raises(ValueError):
        Response(200).add("X", "a\r\nInjected: 1").serialize()


BOUND = CFG.max_header_bytes + CFG.max_body + CFG.max_interleaved + 8


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.binary(max_size=600),
    st.sampled_from([OPTIONS, b"$", b"\r\n\r\n", b"Content-Length: 10\r\n", b"CSeq: 1\r\n",
                     b"DESCRIBE rtsp://x/main RTSP/1.0\r\n", b"\x16\x03\x01"]),
), max_size=40))
def test_fuzz_parser_never_crashes_and_stays_bounded(chunks: list[bytes]) -> None:
    p = RequestParser(CFG)
    for chunk in chunks:
        try:
            events = p.feed(chunk)
        except ParseError:
            return  # the connection would be answered 4xx and closed
        for ev in events:
            assert isinstance(ev, (Request, Interleaved))
        assert p.buffered <= BOUND


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=4096))
def test_fuzz_single_blob(blob: bytes) -> None:
    p = RequestParser(CFG)
    try:
        p.feed(blob)
    except ParseError as exc:
        assert 400 <= exc.status < 600
    assert p.buffered <= BOUND
