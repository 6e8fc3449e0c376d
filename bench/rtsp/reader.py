"""Lightweight RTSP-over-TLS readers for the benchmark: many connections in one process.

Each connection plays the stream (Digest when challenged), then checks every RTP packet: video
and audio sequence continuity (any gap is a dropped frame), and records time to first frame (TCP
connect until the last packet of the first complete keyframe) and per-frame forwarding latency
(arrival wallclock minus the RTP timestamp mapped through the server's RTCP sender reports).
Prints "connected" once every connection is playing, then one JSON line with the results.

    reader.py rtsp HOST PORT PATH USER PASSWORD CAFILE CONNECTIONS SECONDS
    reader.py raw  HOST PORT -    -    -        CAFILE CONNECTIONS SECONDS
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
import struct
import sys
import time

_HDR = struct.Struct("!BBHII")
_SR = struct.Struct("!IIII")


class Conn(asyncio.Protocol):
    def __init__(self, mode: str, started: float) -> None:
        self.mode = mode
        self.started = started
        self.started_wall = time.time()
        self.buf = bytearray()
        self.replies: asyncio.Queue[tuple[int, dict[str, str], bytes]] = asyncio.Queue()
        self.playing = False
        self.closed = asyncio.get_running_loop().create_future()
        self.t: asyncio.Transport | None = None
        self.bytes = 0
        self.packets = {0: 0, 2: 0}
        self.last_seq: dict[int, int] = {}
        self.gaps = 0
        self.frames = 0
        self.ttff: float | None = None
        self.in_key = False
        self.frame_start = True
        self.sr: tuple[float, int] | None = None  # (ntp wall seconds, rtp ts) of video
        self.latencies: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.t = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.mode == "raw":
            return
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        now_wall = time.time()
        while pos < n:
            if buf[pos] == 0x24:
                if pos + 4 > n:
                    break
                ch = buf[pos + 1]
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                end = pos + 4 + length
                if end > n:
                    break
                if ch in (0, 2):
                    self._rtp(ch, buf, pos + 4, now_wall)
                elif ch == 1 and length >= 28 and buf[pos + 5] == 200:
                    msw, lsw, rtp, _ = _SR.unpack_from(buf, pos + 12)
                    self.sr = (msw - 2208988800 + lsw / 4294967296, rtp)
                pos = end
            else:
                head_end = buf.find(b"\r\n\r\n", pos)
                if head_end < 0:
                    break
                head = bytes(buf[pos:head_end]).decode("latin-1").split("\r\n")
                headers = {}
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                if head_end + 4 + length > n:
                    break
                body = bytes(buf[head_end + 4 : head_end + 4 + length])
                self.replies.put_nowait((int(head[0].split(" ")[1]), headers, body))
                pos = head_end + 4 + length
        del buf[:pos]

    def _rtp(self, ch: int, buf: bytearray, p: int, now_wall: float) -> None:
        b1 = buf[p + 1]
        seq = (buf[p + 2] << 8) | buf[p + 3]
        self.packets[ch] += 1
        last = self.last_seq.get(ch)
        if last is not None:
            d = (seq - last) & 0xFFFF
            if d != 1:
                self.gaps += 1 if d == 0 or d > 0x8000 else d - 1
        self.last_seq[ch] = seq
        if ch != 0:
            return
        if self.frame_start:
            nal = buf[p + 12] & 0x1F
            if nal == 28:
                nal = buf[p + 13] & 0x1F
            self.in_key = nal in (5, 7, 8, 24)
        marker = b1 & 0x80
        self.frame_start = bool(marker)
        if marker:
            self.frames += 1
            if self.ttff is None and self.in_key:
                self.ttff = time.monotonic() - self.started
            if self.sr is not None and self.frames % 2 == 0:
                ts = int.from_bytes(buf[p + 4 : p + 8], "big")
                dt = ((ts - self.sr[1] + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                captured = self.sr[0] + dt / 90000
                # only frames produced after this client connected: the cached GOP a new client
                # starts with is up to one GOP old by design and is not forwarding latency
                if captured >= self.started_wall:
                    self.latencies.append(now_wall - captured)

    async def request(self, method: str, uri: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        assert self.t is not None
        lines = [f"{method} {uri} RTSP/1.0"] + [f"{k}: {v}" for k, v in headers.items()]
        self.t.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await asyncio.wait_for(self.replies.get(), 30)


def _md5(s: str) -> str:
    return hashlib.md5(s.encode(), usedforsecurity=False).hexdigest()


async def play(conn: Conn, base: str, user: str, password: str) -> None:
    cseq = 0
    challenge: dict[str, str] | None = None
    session = ""

    async def req(method: str, uri: str, extra: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        nonlocal cseq, challenge
        for _ in range(2):
            cseq += 1
            h = {"CSeq": str(cseq), **extra}
            if session:
                h["Session"] = session
            if challenge is not None:
                ha1 = _md5(f"{user}:{challenge['realm']}:{password}")
                resp = _md5(f"{ha1}:{challenge['nonce']}:{_md5(f'{method}:{uri}')}")
                h["Authorization"] = (f'Digest username="{user}", realm="{challenge["realm"]}", '
                                      f'nonce="{challenge["nonce"]}", uri="{uri}", response="{resp}"')
            status, headers, body = await conn.request(method, uri, h)
            if status == 401 and challenge is None:
                # the MD5 challenge; the reader never sees more than one header per name, so ask
                # for it by name in the last WWW-Authenticate, as FFmpeg does
                challenge = dict(re.findall(r'(\w+)="?([^",]*)"?', headers.get("www-authenticate", "")))
                continue
            return status, headers, body
        return status, headers, body

    status, headers, body = await req("DESCRIBE", base, {"Accept": "application/sdp"})
    if status != 200:
        raise RuntimeError(f"DESCRIBE {status}")
    content_base = headers.get("content-base", base + "/")
    controls = re.findall(rb"a=control:(\S+)", body)
    tracks = [c.decode() for c in controls if c != b"*"]
    for i, control in enumerate(tracks[:2]):
        uri = control if control.startswith("rtsp") else content_base.rstrip("/") + "/" + control
        transport = f"RTP/AVP/TCP;unicast;interleaved={2 * i}-{2 * i + 1}"
        status, headers, _ = await req("SETUP", uri, {"Transport": transport})
        if status != 200:
            raise RuntimeError(f"SETUP {status}")
        session = headers.get("session", "").split(";")[0]
    status, _, _ = await req("PLAY", content_base, {"Range": "npt=0-"})
    if status != 200:
        raise RuntimeError(f"PLAY {status}")
    conn.playing = True


async def one(mode: str, host: str, port: int, path: str, user: str, pw: str, ctx: ssl.SSLContext,
              sem: asyncio.Semaphore) -> Conn:
    loop = asyncio.get_running_loop()
    async with sem:
        started = time.monotonic()
        _, conn = await loop.create_connection(lambda: Conn(mode, started), host, port, ssl=ctx,
                                               server_hostname="127.0.0.1")
        if mode == "rtsp":
            await play(conn, f"rtsps://{host}:{port}/{path}", user, pw)
        else:
            conn.ttff = None
    return conn


async def main(argv: list[str]) -> None:
    mode, host, port, path, user, pw, cafile, n, seconds = argv
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    sem = asyncio.Semaphore(16)
    results = await asyncio.gather(*(one(mode, host, int(port), path, user, pw, ctx, sem) for _ in range(int(n))),
                                   return_exceptions=True)
    conns = [c for c in results if isinstance(c, Conn)]
    errors = [repr(e) for e in results if not isinstance(e, Conn)]
    print("connected", flush=True)
    base_bytes = sum(c.bytes for c in conns)
    t0 = time.monotonic()
    await asyncio.sleep(float(seconds))
    elapsed = time.monotonic() - t0
    out = {
        "connections": len(conns), "errors": errors[:5], "error_count": len(errors),
        "bytes": sum(c.bytes for c in conns), "window_bytes": sum(c.bytes for c in conns) - base_bytes,
        "window_s": elapsed,
        "video_packets": sum(c.packets[0] for c in conns), "audio_packets": sum(c.packets[2] for c in conns),
        "frames": sum(c.frames for c in conns), "gaps": sum(c.gaps for c in conns),
        "closed": sum(1 for c in conns if c.closed.done()),
        "ttff": [c.ttff for c in conns if c.ttff is not None],
        "latency": [x for c in conns for x in c.latencies[:: max(1, len(c.latencies) // 50)]],
    }
    for c in conns:
        if c.t is not None:
            c.t.abort()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
