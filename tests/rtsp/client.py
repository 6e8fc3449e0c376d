"""A small, strict RTSP-over-TLS client for tests and the benchmark's reader processes.

It speaks just enough RTSP (Digest MD5/SHA-256, with and without qop) to play a stream and checks
what a decoder would trip over: interleaved framing, RTP version, per-SSRC sequence continuity and
monotonic timestamps. Not a mock: it talks to the real server over real TLS sockets.
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field


def _h(alg: str, s: str) -> str:
    return (hashlib.md5(s.encode(), usedforsecurity=False) if alg == "MD5" else hashlib.sha256(s.encode())).hexdigest()


def parse_challenges(headers: list[tuple[str, str]]) -> list[dict[str, str]]:
    out = []
    for name, value in headers:
        if name.lower() == "www-authenticate" and value.lower().startswith("digest "):
            out.append({k.lower(): v for k, v in re.findall(r'(\w+)="?([^",]*)"?', value[7:])})
    return out


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class TrackStats:
    packets: int = 0
    bytes: int = 0
    gaps: int = 0
    reorders: int = 0
    last_seq: int | None = None
    last_ts: int | None = None
    markers: int = 0
    first_seq: int | None = None
    ssrc: int | None = None


@dataclass
class RtspClient:
    host: str
    port: int
    user: str | None = None
    password: str | None = None
    ctx: ssl.SSLContext | None = None
    algorithm: str = "MD5"  # which challenge to answer
    use_qop: bool = True
    timeout: float = 10.0
    cseq: int = 0
    sock: socket.socket | ssl.SSLSocket | None = None
    buf: bytearray = field(default_factory=bytearray)
    challenge: dict[str, str] | None = None
    nc: int = 0
    session: str | None = None
    interleaved: list[tuple[int, bytes]] = field(default_factory=list)

    def connect(self) -> RtspClient:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.ctx is None:
            self.sock = raw
        else:
            self.sock = self.ctx.wrap_socket(raw, server_hostname=self.host)
        return self

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send_raw(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def _recv(self) -> bool:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_event(self) -> Reply | tuple[int, bytes] | None:
        """Next response or interleaved frame; None on EOF."""
        while True:
            if self.buf[:1] == b"$":
                if len(self.buf) >= 4:
                    n = struct.unpack("!H", self.buf[2:4])[0]
                    if len(self.buf) >= 4 + n:
                        frame = (self.buf[1], bytes(self.buf[4 : 4 + n]))
                        del self.buf[: 4 + n]
                        return frame
            elif self.buf:
                end = self.buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
                    headers = []
                    for line in head[1:]:
                        k, _, v = line.partition(":")
                        headers.append((k.strip(), v.strip()))
                    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
                    if len(self.buf) >= end + 4 + length:
                        body = bytes(self.buf[end + 4 : end + 4 + length])
                        del self.buf[: end + 4 + length]
                        parts = head[0].split(" ", 2)
                        return Reply(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, body)
            if not self._recv():
                return None

    def read_reply(self) -> Reply:
        while True:
            ev = self.read_event()
            if ev is None:
                raise ConnectionError("connection closed")
            if isinstance(ev, Reply):
                return ev
            self.interleaved.append(ev)

    def authorization(self, method: str, uri: str) -> str | None:
        if self.challenge is None or self.user is None or self.password is None:
            return None
        c = self.challenge
        alg = c.get("algorithm", "MD5").upper()
        ha1 = _h(alg, f"{self.user}:{c['realm']}:{self.password}")
        ha2 = _h(alg, f"{method}:{uri}")
        if self.use_qop and "qop" in c:
            self.nc += 1
            nc = f"{self.nc:08x}"
            cnonce = "0a4f113b"
            resp = _h(alg, f"{ha1}:{c['nonce']}:{nc}:{cnonce}:auth:{ha2}")
            return (f'Digest username="{self.user}", realm="{c["realm"]}", nonce="{c["nonce"]}", '
                    f'uri="{uri}", response="{resp}", algorithm={alg}, qop=auth, nc={nc}, cnonce="{cnonce}"')
        resp = _h(alg, f"{ha1}:{c['nonce']}:{ha2}")
        return (f'Digest username="{self.user}", realm="{c["realm"]}", nonce="{c["nonce"]}", '
                f'uri="{uri}", response="{resp}", algorithm={alg}')

    def request(self, method: str, uri: str, headers: dict[str, str] | None = None, *,
                auth: bool = True, body: bytes = b"") -> Reply:
        for _attempt in range(2):
            self.cseq += 1
            lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {self.cseq}"]
            if auth:
                a = self.authorization(method, uri)
                if a:
                    lines.append(f"Authorization: {a}")
            if self.session and method not in ("DESCRIBE", "OPTIONS"):
                lines.append(f"Session: {self.session}")
            for k, v in (headers or {}).items():
                lines.append(f"{k}: {v}")
            if body:
                lines.append(f"Content-Length: {len(body)}")
            self.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            reply = self.read_reply()
            if reply.status == 401 and auth and self.user is not None:
                challenges = parse_challenges(reply.headers)
                wanted = [c for c in challenges if c.get("algorithm", "MD5").upper() == self.algorithm]
                if wanted and (self.challenge is None or wanted[0].get("stale", "").upper() == "TRUE"):
                    self.challenge = wanted[0]
                    self.nc = 0
                    continue
            return reply
        return reply

    def play(self, path: str, *, tracks: int | None = None, scheme: str = "rtsps",
             extra: dict[str, str] | None = None) -> Reply:
        base = f"{scheme}://{self.host}:{self.port}/{path}"
        d = self.request("DESCRIBE", base, {"Accept": "application/sdp", **(extra or {})})
        if d.status != 200:
            return d
        content_base = d.header("Content-Base") or base + "/"
        n = tracks if tracks is not None else d.body.count(b"m=")
        for i in range(n):
            r = self.request("SETUP", f"{content_base}trackID={i}",
                             {"Transport": f"RTP/AVP/TCP;unicast;interleaved={2 * i}-{2 * i + 1}", **(extra or {})})
            if r.status != 200:
                return r
            self.session = (r.header("Session") or "").split(";")[0]
        return self.request("PLAY", content_base, {"Range": "npt=0.000-", **(extra or {})})


def rtp_stats(frames: list[tuple[int, bytes]], stats: dict[int, TrackStats] | None = None) -> dict[int, TrackStats]:
    stats = stats if stats is not None else {}
    for ch, pkt in frames:
        if ch % 2:
            continue
        st = stats.setdefault(ch, TrackStats())
        if len(pkt) < 12 or pkt[0] >> 6 != 2:
            raise AssertionError("not RTP")
        seq, ts, ssrc = struct.unpack("!HII", pkt[2:12])
        if st.ssrc is None:
            st.ssrc = ssrc
        elif st.ssrc != ssrc:
            raise AssertionError("SSRC changed")
        if st.last_seq is not None:
            d = (seq - st.last_seq) & 0xFFFF
            if d == 0 or d > 0x8000:
                st.reorders += 1
            elif d > 1:
                st.gaps += d - 1
        else:
            st.first_seq = seq
        if pkt[1] & 0x80:
            st.markers += 1
        st.last_seq, st.last_ts = seq, ts
        st.packets += 1
        st.bytes += len(pkt)
    return stats


def pull(client: RtspClient, seconds: float) -> dict[int, TrackStats]:
    stats: dict[int, TrackStats] = {}
    end = time.monotonic() + seconds
    stats = rtp_stats(client.interleaved, stats)
    client.interleaved.clear()
    while time.monotonic() < end:
        ev = client.read_event()
        if ev is None:
            break
        if isinstance(ev, tuple):
            rtp_stats([ev], stats)
    return stats
