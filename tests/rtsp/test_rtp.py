"""RTP packetization round trips, RTCP SR mapping, and parsing of client RTP."""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import Any

import av
import pytest

from agent.media.annexb import split_annexb
from agent.rtsp.rtp import (
    NTP_EPOCH_OFFSET,
    TrackPacketizer,
    aac_hbr_payloads,
    fragment_h264,
    fragment_h265,
    interleave,
    parse_rtp,
    parse_sender_report,
    rtp_header,
)


def encode(codec: str, n: int = 3, size: tuple[int, int] = (320, 240)) -> list[bytes]:
    """Real Annex B access units from libx264/libx265."""
    ctx: Any = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = size[0], size[1], "yuv420p"
    ctx.time_base = Fraction(1, 30)
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency"} if codec == "libx264" else {
        "preset": "ultrafast", "x265-params": "log-level=none"}
    out = []
    src = av.open("testsrc2=size=320x240:rate=30", format="lavfi")
    try:
        for i, frame in enumerate(src.decode(video=0)):
            if i >= n:
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            out += [bytes(p) for p in ctx.encode(frame)]
        out += [bytes(p) for p in ctx.encode(None)]
    finally:
        src.close()
    return out


def reassemble_h264(payloads: list[bytes]) -> list[bytes]:
    nals: list[bytes] = []
    cur = bytearray()
    for p in payloads:
        if p[0] & 0x1F == 28:
            if p[1] & 0x80:
                cur = bytearray([(p[0] & 0xE0) | (p[1] & 0x1F)])
            cur += p[2:]
            if p[1] & 0x40:
                nals.append(bytes(cur))
        else:
            nals.append(p)
    return nals


def reassemble_h265(payloads: list[bytes]) -> list[bytes]:
    nals: list[bytes] = []
    cur = bytearray()
    for p in payloads:
        if (p[0] >> 1) & 0x3F == 49:
            if p[2] & 0x80:
                cur = bytearray([(p[0] & 0x81) | ((p[2] & 0x3F) << 1), p[1]])
            cur += p[3:]
            if p[2] & 0x40:
                nals.append(bytes(cur))
        else:
            nals.append(p)
    return nals


@pytest.mark.parametrize("mtu", [100, 1400])
def test_h264_round_trip_real_bitstream(mtu: int) -> None:
    aus = encode("libx264")
    assert aus
    pk = TrackPacketizer("h264", 96, 90000, mtu)
    for i, au in enumerate(aus):
        packets = pk.packetize(au, i * 3000, 1000.0 + i / 30)
        assert all(len(p) - 12 <= mtu for _, p in packets)
        payloads = [p[12:] for _, p in packets]
        markers = [bool(p[1] & 0x80) for _, p in packets]
        assert markers == [False] * (len(packets) - 1) + [True]
        expected = [n for n in split_annexb(au) if n[0] & 0x1F not in (9, 12)]
        assert reassemble_h264(payloads) == expected
    seqs = [s for s in range(pk.packets)]
    assert len(seqs) == pk.packets


def test_h265_round_trip_real_bitstream() -> None:
    aus = encode("libx265", n=2)
    pk = TrackPacketizer("h265", 96, 90000, 300)
    for i, au in enumerate(aus):
        payloads = [p[12:] for _, p in pk.packetize(au, i * 3000, 0.0)]
        expected = [n for n in split_annexb(au) if (n[0] >> 1) & 0x3F not in (35, 38)]
        assert reassemble_h265(payloads) == expected


def test_fu_boundaries() -> None:
    nal = bytes([0x65]) + bytes(range(256)) * 20
    frags = fragment_h264(nal, 1000)
    assert frags[0][1] & 0x80 and frags[-1][1] & 0x40
    assert not any(f[1] & 0xC0 for f in frags[1:-1])
    assert fragment_h264(b"\x41abc", 1000) == [b"\x41abc"]
    nal5 = bytes([0x26, 0x01]) + b"x" * 3000
    f5 = fragment_h265(nal5, 1000)
    assert f5[0][0] >> 1 & 0x3F == 49 and f5[0][2] == 0x80 | 19 and f5[-1][2] & 0x40


def test_aac_hbr_header_and_fragments() -> None:
    [p] = aac_hbr_payloads(b"\x21" * 300, 1400)
    assert struct.unpack("!HH", p[:4]) == (16, 300 << 3) and p[4:] == b"\x21" * 300
    frags = aac_hbr_payloads(b"\x01" * 3000, 1400)
    assert len(frags) == 3 and all(struct.unpack("!H", f[2:4])[0] >> 3 == 3000 for f in frags)
    assert b"".join(f[4:] for f in frags) == b"\x01" * 3000
    with pytest.raises(ValueError):
        aac_hbr_payloads(b"\x00" * 9000, 1400)


def test_g711_split_and_sequence_wraps() -> None:
    pk = TrackPacketizer("pcmu", 0, 8000, 100)
    pk.next_seq = 0xFFFF
    packets = pk.packetize(b"\xff" * 250, 160, 5.0)
    assert [s for s, _ in packets] == [0xFFFF, 0, 1]
    assert [len(p) - 12 for _, p in packets] == [100, 100, 50]
    assert all(p[1] == 0 for _, p in packets)  # PT 0, no marker


def test_sender_report_maps_capture_time_to_rtp_time() -> None:
    pk = TrackPacketizer("h264", 96, 90000, 1400)
    au = encode("libx264", n=1)[0]
    pk.packetize(au, 90000 * 7, 1_700_000_000.25)
    sr_bytes = pk.sender_report("cam@x")
    assert sr_bytes is not None
    sr = parse_sender_report(sr_bytes)
    assert sr.ssrc == pk.ssrc and sr.rtp_ts == pk.rtp_ts(90000 * 7)
    assert abs(sr.ntp_seconds - 1_700_000_000.25) < 1e-6
    assert sr.packets == pk.packets and sr.octets == pk.octets
    assert struct.unpack("!I", sr_bytes[8:12])[0] == (1_700_000_000 + NTP_EPOCH_OFFSET)
    assert len(sr_bytes) % 4 == 0 and sr_bytes[29] == 202  # SDES follows


def test_parse_client_rtp() -> None:
    base = rtp_header(0, 5, 160, 0x1234, False)
    assert parse_rtp(base + b"abc").payload == b"abc"
    csrc = bytes([0x82]) + base[1:] + b"\x00" * 8 + b"xyz"
    assert parse_rtp(csrc).payload == b"xyz"
    ext = bytes([0x90]) + base[1:] + b"\xbe\xde\x00\x01" + b"\x00" * 4 + b"pl"
    assert parse_rtp(ext).payload == b"pl"
    pad = bytes([0xA0]) + base[1:] + b"data" + b"\x00\x00\x03"
    assert parse_rtp(pad).payload == b"data"
    for bad in (b"", b"\x80" * 5, bytes([0x40]) + base[1:], bytes([0xA0]) + base[1:] + b"\x00\x50",
                bytes([0x8F]) + base[1:]):
        with pytest.raises(ValueError):
            parse_rtp(bad)


def test_interleave_frame() -> None:
    assert interleave(3, b"ab") == b"$\x03\x00\x02ab"
