"""RTSP 1.0 message framing (RFC 2326): bounded request parser and response serializer.

Sans-I/O: ``RequestParser.feed(bytes)`` returns the complete events in the buffer (requests and
interleaved binary frames, RFC 2326 10.12) and raises a ``ParseError`` subclass the moment the
input can no longer become a valid bounded message, so an attacker cannot make the server buffer
more than ``max_header_bytes + max_body`` bytes per connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.rtsp.config import RtspConfig
from agent.rtsp.errors import HeaderTooLarge, ParseError, TooLarge

METHODS = frozenset(
    {"OPTIONS", "DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER",
     "ANNOUNCE", "RECORD", "REDIRECT"}
)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_URI = re.compile(rb"[\x21-\x7e]+")
# headers that must appear at most once; a duplicate is an attempt to confuse a proxy or us
_SINGLE = frozenset({"cseq", "content-length", "session", "authorization", "transport", "require"})

REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Request Entity Too Large",
    414: "Request-URI Too Large", 431: "Request Header Fields Too Large",
    453: "Not Enough Bandwidth", 454: "Session Not Found", 455: "Method Not Valid in This State",
    459: "Aggregate Operation Not Allowed", 461: "Unsupported Transport", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "RTSP Version Not Supported",
    551: "Option not supported",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    uri: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def cseq(self) -> int | None:
        raw = self.headers.get("cseq")
        if raw is None or not raw.isdigit() or len(raw) > 9:
            return None
        return int(raw)


@dataclass(frozen=True, slots=True)
class Interleaved:
    channel: int
    payload: bytes


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    reason: str | None = None

    def add(self, name: str, value: str) -> Response:
        self.headers.append((name, value))
        return self

    def serialize(self) -> bytes:
        reason = self.reason or REASONS.get(self.status, "Unknown")
        lines = [f"RTSP/1.0 {self.status} {reason}"]
        for name, value in self.headers:
            if "\r" in value or "\n" in value:  # never let data from a request split our headers
                raise ValueError(f"header {name} contains a line break")
            lines.append(f"{name}: {value}")
        if self.body:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + self.body


Event = Request | Interleaved


class RequestParser:
    def __init__(self, config: RtspConfig) -> None:
        self._cfg = config
        self._buf = bytearray()
        self._pending: tuple[Request, int] | None = None  # headers parsed, waiting for the body

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message; the adapter's slowloris deadline runs while > 0."""
        return len(self._buf) + (1 if self._pending else 0)

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        while True:
            event = self._next()
            if event is None:
                break
            events.append(event)
        return events

    def _next(self) -> Event | None:
        buf = self._buf
        if self._pending is not None:
            req, length = self._pending
            if len(buf) < length:
                return None
            body = bytes(buf[:length])
            del buf[:length]
            self._pending = None
            return Request(req.method, req.uri, req.headers, body)
        if not buf:
            return None
        if buf[0] == 0x24:  # '$' interleaved frame
            if len(buf) < 4:
                return None
            length = int.from_bytes(buf[2:4], "big")
            if length > self._cfg.max_interleaved:
                raise TooLarge(f"interleaved frame of {length} bytes", code="rtsp.interleaved_too_large")
            if len(buf) < 4 + length:
                return None
            frame = Interleaved(buf[1], bytes(buf[4 : 4 + length]))
            del buf[: 4 + length]
            return frame
        # tolerate CRLFs between messages (RFC 2326 keep-alive practice of some clients)
        while buf[:2] == b"\r\n":
            del buf[:2]
        if not buf:
            return None
        end = buf.find(b"\r\n\r\n", 0, self._cfg.max_header_bytes + 4)
        if end < 0:
            if len(buf) > self._cfg.max_header_bytes:
                raise HeaderTooLarge("request header block too large")
            line_end = buf.find(b"\r\n")
            limit = self._cfg.max_request_line
            if (line_end < 0 and len(buf) > limit) or line_end > limit:
                raise HeaderTooLarge("request line too long", code="rtsp.request_line_too_long")
            # fail early on garbage (e.g. a TLS ClientHello on a plain port) instead of waiting
            first = bytes(buf[: min(len(buf), 16)])
            if not _plausible_start(first):
                raise ParseError("not an RTSP request")
            return None
        head = bytes(buf[:end])
        del buf[: end + 4]
        req, length = _parse_head(head, self._cfg)
        if length:
            self._pending = (req, length)
            return self._next()
        return req


def _plausible_start(prefix: bytes) -> bool:
    word = prefix.split(b" ", 1)[0]
    if not word:
        return False
    return _TOKEN.fullmatch(word) is not None


def _parse_head(head: bytes, cfg: RtspConfig) -> tuple[Request, int]:
    lines = head.split(b"\r\n")
    request_line = lines[0]
    if len(request_line) > cfg.max_request_line:
        raise HeaderTooLarge("request line too long", code="rtsp.request_line_too_long")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise ParseError("malformed request line")
    method_b, uri_b, version = parts
    if not _TOKEN.fullmatch(method_b) or not _URI.fullmatch(uri_b):
        raise ParseError("malformed request line")
    if version != b"RTSP/1.0":
        raise ParseError("unsupported RTSP version", code="rtsp.version", status=505)
    if len(lines) - 1 > cfg.max_headers:
        raise HeaderTooLarge("too many header fields", code="rtsp.too_many_headers")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name_b, sep, value_b = raw.partition(b":")
        if not sep or not _TOKEN.fullmatch(name_b):
            # also rejects obsolete line folding (a line starting with whitespace)
            raise ParseError("malformed header line")
        try:
            value = value_b.decode("ascii").strip(" \t")
        except UnicodeDecodeError as exc:
            raise ParseError("non-ASCII header value") from exc
        if any(ord(c) < 0x20 and c != "\t" for c in value) or "\x7f" in value:
            raise ParseError("control character in header value")
        name = name_b.decode("ascii").lower()
        if name in headers:
            if name in _SINGLE:
                raise ParseError(f"duplicate {name} header", close=False)
            headers[name] = headers[name] + ", " + value
        else:
            headers[name] = value
    length = 0
    raw_len = headers.get("content-length")
    if raw_len is not None:
        if not raw_len.isdigit() or len(raw_len) > 9:
            raise ParseError("bad Content-Length")
        length = int(raw_len)
        if length > cfg.max_body:
            raise TooLarge(f"body of {length} bytes")
    req = Request(method_b.decode("ascii"), uri_b.decode("ascii"), headers)
    return req, length


def parse_header_params(value: str, *, max_items: int = 32) -> list[tuple[str, str | None]]:
    """Split ``a=b;c;d="e"`` style parameter lists (Transport, Session) with a bound."""
    items: list[tuple[str, str | None]] = []
    for part in value.split(";"):
        part = part.strip()
        if not part:
            continue
        if len(items) >= max_items:
            raise ParseError("too many parameters", close=False)
        key, sep, val = part.partition("=")
        items.append((key.strip(), val.strip().strip('"') if sep else None))
    return items


def join_tokens(values: Iterable[str]) -> str:
    return ", ".join(values)
