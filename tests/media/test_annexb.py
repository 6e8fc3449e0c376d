"""Parameter-set extraction on real libx264/libx265 bitstreams, and malformed-input tables."""

from __future__ import annotations

import base64
import fractions
from typing import Any

import av
import pytest

from agent.media.annexb import (
    H264_PPS,
    H264_SPS,
    H265_PPS,
    H265_SPS,
    H265_VPS,
    aac_audio_specific_config,
    avcc_to_annexb,
    h264_profile_level_id,
    h265_profile_tier_level,
    h265_type,
    parameter_sets,
    parse_aac_config,
    split_annexb,
    unescape_rbsp,
)
from agent.media.encode import VideoEncoder
from agent.media.errors import BitstreamError
from agent.media.frames import VideoDescription
from agent.media.mediaconfig import VideoConfig


def _encode(codec: str, n: int = 12, width: int = 320, height: int = 180) -> list[tuple[bytes, bool]]:
    encoder = "libx264" if codec == "h264" else "libx265"
    enc = VideoEncoder("main", VideoConfig(codec, width, height, 15, 300, 5, encoder))
    src = av.open(f"testsrc2=size={width}x{height}:rate=15", format="lavfi")
    out = []
    for i, frame in enumerate(src.decode(video=0)):
        out += [(f.data, f.keyframe) for f in enc.encode(frame, i * 6000, 0.0)]
        if i >= n:
            break
    src.close()
    return out


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_parameter_sets_from_real_bitstream(codec: str) -> None:
    aus = _encode(codec)
    keys = [au for au, k in aus if k]
    assert len(keys) >= 2, "gop=5 over 12 frames gives several keyframes"
    ps = parameter_sets(codec, keys[0])
    assert ps.keyframe and ps.sps and ps.pps
    if codec == "h264":
        assert ps.sps[0] & 0x1F == H264_SPS and ps.pps[0] & 0x1F == H264_PPS
        # Baseline-compatible (ultrafast) profile, constrained flags, some level
        assert h264_profile_level_id(ps.sps)[:2] in ("42", "4d", "64")
    else:
        assert h265_type(ps.vps) == H265_VPS and h265_type(ps.sps) == H265_SPS and h265_type(ps.pps) == H265_PPS
        ptl = h265_profile_tier_level(ps.sps)
        assert ptl.profile_id == 1  # Main
        assert 30 <= ptl.level_id <= 186
    # in-band headers are repeated on every keyframe (repeat-headers), so late joiners can decode
    for au in keys[1:]:
        assert parameter_sets(codec, au).sps == ps.sps
    non_key = [au for au, k in aus if not k]
    assert non_key and not parameter_sets(codec, non_key[0]).keyframe


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_sprop_decodes_with_ffmpeg(codec: str) -> None:
    """The SDP parameter sets alone let a decoder decode the first keyframe with them stripped."""
    aus = _encode(codec, n=3)
    key = aus[0][0]
    ps = parameter_sets(codec, key)
    desc = VideoDescription(codec, 320, 180, 15.0, vps=ps.vps, sps=ps.sps, pps=ps.pps)
    fmtp = desc.fmtp()
    params = dict(kv.split("=", 1) for kv in fmtp.split(";"))
    if codec == "h264":
        sets = [base64.b64decode(x) for x in params["sprop-parameter-sets"].split(",")]
        assert params["profile-level-id"] == ps.sps[1:4].hex() and params["packetization-mode"] == "1"
    else:
        sets = [base64.b64decode(params[k]) for k in ("sprop-vps", "sprop-sps", "sprop-pps")]
    extradata = b"".join(b"\x00\x00\x00\x01" + s for s in sets)
    stripped = b"".join(b"\x00\x00\x00\x01" + n for n in split_annexb(key) if n not in sets)
    dec: Any = av.CodecContext.create("h264" if codec == "h264" else "hevc", "r")
    dec.extradata = extradata
    pics = dec.decode(av.Packet(stripped)) + dec.decode(None)
    assert pics and (pics[0].width, pics[0].height) == (320, 180)


def test_split_handles_3_and_4_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\x00\x00\x00\x01\x65\xcc\xdd"
    assert split_annexb(data) == [b"\x67\xaa", b"\x68\xbb", b"\x65\xcc\xdd"]


def test_avcc_roundtrip() -> None:
    nals = [b"\x67\x42\x00\x1e", b"\x68\xce", b"\x65" + bytes(100)]
    avcc = b"".join(len(n).to_bytes(4, "big") + n for n in nals)
    assert split_annexb(avcc_to_annexb(avcc)) == nals


def test_unescape_rbsp() -> None:
    assert unescape_rbsp(b"\x00\x00\x03\x01\x00\x00\x03\x00") == b"\x00\x00\x01\x00\x00\x00"


BAD_ANNEXB = [
    ("no start code", b"\x67\x42\x00\x1e", "media.not_annexb"),
    ("garbage before start", b"\x12\x00\x00\x01\x67", "media.not_annexb"),
    ("empty", b"", "media.not_annexb"),
]


@pytest.mark.parametrize(("name", "data", "code"), BAD_ANNEXB, ids=[b[0] for b in BAD_ANNEXB])
def test_bad_annexb(name: str, data: bytes, code: str) -> None:
    with pytest.raises(BitstreamError) as ei:
        split_annexb(data)
    assert ei.value.code == code


def test_oversized_access_unit_refused() -> None:
    with pytest.raises(BitstreamError) as ei:
        split_annexb(b"\x00\x00\x01" + bytes(100), max_size=50)
    assert ei.value.code == "media.au_too_large"


BAD_AVCC = [
    ("truncated length", b"\x00\x00", "media.bitstream_truncated"),
    ("length beyond buffer", b"\x00\x00\x00\x09\x65\x00", "media.bitstream_truncated"),
    ("zero length", b"\x00\x00\x00\x00", "media.bitstream_truncated"),
]


@pytest.mark.parametrize(("name", "data", "code"), BAD_AVCC, ids=[b[0] for b in BAD_AVCC])
def test_bad_avcc(name: str, data: bytes, code: str) -> None:
    with pytest.raises(BitstreamError) as ei:
        avcc_to_annexb(data)
    assert ei.value.code == code


BAD_PS = [
    ("h264 sps too short", "h264", b"\x00\x00\x01\x67\x42", "media.bitstream_truncated"),
    ("h265 sps too short", "h265", b"\x00\x00\x01\x42\x01\x01", "media.bitstream_truncated"),
    ("h265 one-byte nal", "h265", b"\x00\x00\x01\x40", "media.bitstream_truncated"),
    ("oversized sps", "h264", b"\x00\x00\x01\x67" + b"\x11" * 5000, "media.bitstream_invalid"),
    ("audio codec", "aac", b"\x00\x00\x01\x67", "media.codec_unsupported"),
]


@pytest.mark.parametrize(("name", "codec", "data", "code"), BAD_PS, ids=[b[0] for b in BAD_PS])
def test_bad_parameter_sets(name: str, codec: str, data: bytes, code: str) -> None:
    with pytest.raises(BitstreamError) as ei:
        parameter_sets(codec, data)
    assert ei.value.code == code


@pytest.mark.parametrize(("rate", "channels", "expected"), [(16000, 1, "1408"), (8000, 1, "1588"), (48000, 2, "1190")])
def test_aac_config(rate: int, channels: int, expected: str) -> None:
    asc = aac_audio_specific_config(rate, channels)
    assert asc.hex() == expected  # RFC 3640 / ISO 14496-3 values (e.g. 1190 = LC 48 kHz stereo)
    cfg = parse_aac_config(asc)
    assert (cfg.object_type, cfg.sample_rate, cfg.channels) == (2, rate, channels)


def test_aac_config_of_ffmpeg_encoder_parses() -> None:
    ctx: Any = av.CodecContext.create("aac", "w")
    ctx.sample_rate = 16000
    ctx.layout = "mono"
    ctx.format = "fltp"
    ctx.time_base = fractions.Fraction(1, 16000)
    ctx.open()
    cfg = parse_aac_config(bytes(ctx.extradata))
    assert (cfg.object_type, cfg.sample_rate, cfg.channels) == (2, 16000, 1)


BAD_ASC = [
    ("one byte", b"\x14", "media.bitstream_invalid"),
    ("reserved rate index", bytes([(2 << 3) | 0b110, 0b10001000]), "media.bitstream_invalid"),
    ("zero channels", bytes([0x14, 0x00]), "media.codec_unsupported"),
    ("escaped object type", bytes([0xF8, 0x00, 0x00]), "media.codec_unsupported"),
    ("explicit rate truncated", bytes([0x17, 0x80]), "media.bitstream_truncated"),
    ("too long", bytes(65), "media.bitstream_invalid"),
]


@pytest.mark.parametrize(("name", "asc", "code"), BAD_ASC, ids=[b[0] for b in BAD_ASC])
def test_bad_aac_config(name: str, asc: bytes, code: str) -> None:
    with pytest.raises(BitstreamError) as ei:
        parse_aac_config(asc)
    assert ei.value.code == code
