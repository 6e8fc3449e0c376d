"""RTP packetization (RFC 3550) for H.264 (RFC 6184), H.265 (RFC 7798), G.711 (RFC 3551) and
AAC (RFC 3640 AAC-hbr), RTCP sender reports, and RTSP interleaved framing (RFC 2326 10.12).

Pure functions and small state objects: bytes in, bytes out. A ``TrackPacketizer`` owns one RTP
sequence/SSRC space per stream track; every client of that stream receives the same packets, so
a frame is packetized once however many clients watch.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from agent.media.annexb import split_annexb

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_HDR = struct.Struct("!BBHII")
_INTERLEAVED = struct.Struct("!cBH")

# NAL unit types we never send: access unit delimiters and filler data carry no picture and
# cost bandwidth on every client.
_H264_SKIP = frozenset({9, 12})
_H265_SKIP = frozenset({35, 38})


def rtp_header(pt: int, seq: int, ts: int, ssrc: int, marker: bool) -> bytes:
    return _HDR.pack(0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


def interleave(channel: int, packet: bytes) -> bytes:
    return _INTERLEAVED.pack(b"$", channel, len(packet)) + packet


@dataclass(frozen=True, slots=True)
class RtpPacket:
    pt: int
    seq: int
    ts: int
    ssrc: int
    marker: bool
    payload: bytes


def parse_rtp(packet: bytes) -> RtpPacket:
    """Parse an RTP packet from a client (backchannel audio); raises ValueError if malformed."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise ValueError("not RTP version 2")
    b0, b1, seq, ts, ssrc = _HDR.unpack_from(packet)
    pos = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension
        if len(packet) < pos + 4:
            raise ValueError("truncated RTP extension")
        pos += 4 + 4 * int.from_bytes(packet[pos + 2 : pos + 4], "big")
    end = len(packet)
    if b0 & 0x20:  # padding
        pad = packet[-1]
        if pad == 0 or pad > end - pos:
            raise ValueError("bad RTP padding")
        end -= pad
    if pos > end:
        raise ValueError("truncated RTP packet")
    return RtpPacket(b1 & 0x7F, seq, ts, ssrc, bool(b1 & 0x80), packet[pos:end])


def fragment_h264(nal: bytes, mtu: int) -> list[bytes]:
    """Single NAL unit packet, or FU-A fragments (RFC 6184 5.8) for a NAL larger than ``mtu``."""
    if len(nal) <= mtu:
        return [nal]
    indicator = (nal[0] & 0xE0) | 28
    nal_type = nal[0] & 0x1F
    body = memoryview(nal)[1:]
    step = mtu - 2
    out = []
    for off in range(0, len(body), step):
        chunk = body[off : off + step]
        fu = nal_type | (0x80 if off == 0 else 0) | (0x40 if off + step >= len(body) else 0)
        out.append(bytes((indicator, fu)) + chunk)
    return out


def fragment_h265(nal: bytes, mtu: int) -> list[bytes]:
    """Single NAL unit packet, or FU fragments (RFC 7798 4.4.3, type 49) for a large NAL."""
    if len(nal) <= mtu:
        return [nal]
    nal_type = (nal[0] >> 1) & 0x3F
    ph0 = (nal[0] & 0x81) | (49 << 1)
    ph1 = nal[1]
    body = memoryview(nal)[2:]
    step = mtu - 3
    out = []
    for off in range(0, len(body), step):
        chunk = body[off : off + step]
        fu = nal_type | (0x80 if off == 0 else 0) | (0x40 if off + step >= len(body) else 0)
        out.append(bytes((ph0, ph1, fu)) + chunk)
    return out


def aac_hbr_payloads(au: bytes, mtu: int) -> list[bytes]:
    """RFC 3640 AAC-hbr: AU-headers-length (16 bits) then one 16-bit AU-header (13-bit size,
    3-bit index). An AU larger than one packet is fragmented; each fragment repeats the header
    with the whole AU size (RFC 3640 3.2.3)."""
    if len(au) >= 1 << 13:
        raise ValueError("AAC access unit exceeds 13-bit size")
    header = struct.pack("!HH", 16, len(au) << 3)
    step = mtu - len(header)
    return [header + au[off : off + step] for off in range(0, max(len(au), 1), step)]


class TrackPacketizer:
    """One RTP stream (SSRC, sequence space, timestamp offset) of one track of one stream."""

    def __init__(self, codec: str, payload_type: int, clock_rate: int, mtu: int) -> None:
        self.codec = codec
        self.pt = payload_type
        self.clock_rate = clock_rate
        self.mtu = mtu
        self.ssrc = secrets.randbits(32)
        # RFC 3550 5.1: random initial sequence number and timestamp
        self.next_seq = secrets.randbits(16)
        self._ts_offset = secrets.randbits(32)
        self.packets = 0
        self.octets = 0
        self.last_rtp_ts: int | None = None
        self.last_wallclock = 0.0

    def rtp_ts(self, pts: int) -> int:
        return (pts + self._ts_offset) & 0xFFFFFFFF

    def payloads(self, data: bytes) -> list[bytes]:
        mtu = self.mtu
        if self.codec == "h264":
            out: list[bytes] = []
            for nal in split_annexb(data):
                if nal[0] & 0x1F not in _H264_SKIP:
                    out.extend(fragment_h264(nal, mtu))
            return out
        if self.codec == "h265":
            out = []
            for nal in split_annexb(data):
                if len(nal) >= 2 and (nal[0] >> 1) & 0x3F not in _H265_SKIP:
                    out.extend(fragment_h265(nal, mtu))
            return out
        if self.codec == "aac":
            return aac_hbr_payloads(data, mtu)
        # G.711: samples are independent, any split is valid
        return [data[off : off + mtu] for off in range(0, len(data), mtu)] or [b""]

    def packetize(self, data: bytes, pts: int, wallclock: float) -> list[tuple[int, bytes]]:
        """RTP packets of one frame as (seq, packet); the marker bit ends the access unit
        (video) or, for AAC, the last fragment of the AU."""
        ts = self.rtp_ts(pts)
        payloads = self.payloads(data)
        last = len(payloads) - 1
        out = []
        seq = self.next_seq
        video = self.codec in ("h264", "h265")
        for i, payload in enumerate(payloads):
            marker = (i == last) if (video or self.codec == "aac") else False
            out.append((seq, rtp_header(self.pt, seq, ts, self.ssrc, marker) + payload))
            self.octets += len(payload)
            seq = (seq + 1) & 0xFFFF
        self.next_seq = seq
        self.packets += len(out)
        self.last_rtp_ts = ts
        self.last_wallclock = wallclock
        return out

    def sender_report(self, cname: str) -> bytes | None:
        """RTCP SR + SDES CNAME compound packet (RFC 3550 6.4.1, 6.5) mapping the last frame's
        capture wallclock to its RTP timestamp: exact, no extrapolation between clocks."""
        if self.last_rtp_ts is None:
            return None
        return sender_report(self.ssrc, self.last_wallclock, self.last_rtp_ts, self.packets,
                             self.octets, cname)


def ntp_timestamp(unix_time: float) -> tuple[int, int]:
    secs = int(unix_time) + NTP_EPOCH_OFFSET
    frac = int((unix_time - int(unix_time)) * (1 << 32)) & 0xFFFFFFFF
    return secs & 0xFFFFFFFF, frac


def sender_report(ssrc: int, wallclock: float, rtp_ts: int, packets: int, octets: int, cname: str) -> bytes:
    msw, lsw = ntp_timestamp(wallclock)
    sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, msw, lsw, rtp_ts & 0xFFFFFFFF,
                     packets & 0xFFFFFFFF, octets & 0xFFFFFFFF)
    name = cname.encode()[:255]
    item = bytes((1, len(name))) + name + b"\x00"  # CNAME item, then the END item
    item += b"\x00" * (-len(item) % 4)
    sdes = struct.pack("!BBHI", 0x81, 202, (len(item) + 4) // 4, ssrc) + item
    return sr + sdes


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_seconds: float  # unix time
    rtp_ts: int
    packets: int
    octets: int


def parse_sender_report(data: bytes) -> SenderReport:
    if len(data) < 28 or data[1] != 200:
        raise ValueError("not an RTCP SR")
    _, _, _, ssrc, msw, lsw, ts, packets, octets = struct.unpack_from("!BBHIIIIII", data)
    return SenderReport(ssrc, msw - NTP_EPOCH_OFFSET + lsw / (1 << 32), ts, packets, octets)
