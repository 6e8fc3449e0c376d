"""Pure bitstream helpers: Annex B NAL splitting, parameter sets, AAC AudioSpecificConfig.

Why here and not from PyAV: libx264/libx265 leave ``extradata`` empty unless the global-header flag
is set, and an upstream RTSP stream may change parameter sets in band, so SDP data (RFC 6184
sprop-parameter-sets / profile-level-id, RFC 7798 sprop-vps/sps/pps, RFC 3640 config=) is taken
from the access units themselves. Every function is bounded and raises ``BitstreamError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from agent.media.errors import BitstreamError

# H.264 nal_unit_type (ITU-T H.264 table 7-1)
H264_IDR = 5
H264_SEI = 6
H264_SPS = 7
H264_PPS = 8
H264_AUD = 9
# H.265 nal_unit_type (ITU-T H.265 table 7-1)
H265_IRAP_FIRST = 16
H265_IRAP_LAST = 23
H265_VPS = 32
H265_SPS = 33
H265_PPS = 34
H265_AUD = 35

MAX_ACCESS_UNIT = 8 * 1024 * 1024
MAX_PARAMETER_SET = 4096


def split_annexb(data: bytes, *, max_size: int = MAX_ACCESS_UNIT) -> list[bytes]:
    """NAL units of an Annex B byte stream, without start codes (3- or 4-byte).

    Trailing zero bytes before a start code belong to the next start code (H.264 B.1.1
    trailing_zero_8bits), so they are stripped from the preceding NAL unit.
    """
    if len(data) > max_size:
        raise BitstreamError("access unit exceeds the size limit", code="media.au_too_large")
    starts: list[tuple[int, int]] = []  # (start code offset, payload offset)
    i = 0
    n = len(data)
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        starts.append((j, j + 3))
        i = j + 3
    if not starts:
        raise BitstreamError("no Annex B start code", code="media.not_annexb")
    if data[: starts[0][0]].strip(b"\x00"):
        raise BitstreamError("bytes before the first start code", code="media.not_annexb")
    nals: list[bytes] = []
    for k, (_, payload) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else n
        nal = data[payload:end].rstrip(b"\x00") if k + 1 < len(starts) else data[payload:end]
        if nal:
            nals.append(nal)
    return nals


def avcc_to_annexb(data: bytes, *, length_size: int = 4, max_size: int = MAX_ACCESS_UNIT) -> bytes:
    """Length-prefixed (MP4 / avcC / hvcC style) NAL units to Annex B with 4-byte start codes."""
    if len(data) > max_size:
        raise BitstreamError("access unit exceeds the size limit", code="media.au_too_large")
    if length_size not in (1, 2, 4):
        raise BitstreamError("unsupported NAL length size", code="media.bitstream_invalid")
    out = bytearray()
    pos = 0
    while pos < len(data):
        if pos + length_size > len(data):
            raise BitstreamError("truncated NAL length", code="media.bitstream_truncated")
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > len(data):
            raise BitstreamError("NAL length beyond the buffer", code="media.bitstream_truncated")
        out += b"\x00\x00\x00\x01" + data[pos : pos + size]
        pos += size
    return bytes(out)


def is_annexb(data: bytes) -> bool:
    return data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")


def h264_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def h265_type(nal: bytes) -> int:
    if len(nal) < 2:
        raise BitstreamError("H.265 NAL unit shorter than its header", code="media.bitstream_truncated")
    return (nal[0] >> 1) & 0x3F


def unescape_rbsp(nal: bytes) -> bytes:
    """Remove emulation-prevention bytes (00 00 03 -> 00 00)."""
    out = bytearray()
    zeros = 0
    for b in nal:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


@dataclass(frozen=True, slots=True)
class ParameterSets:
    """Parameter sets found in an access unit (empty bytes when absent)."""

    vps: bytes = b""
    sps: bytes = b""
    pps: bytes = b""
    keyframe: bool = False

    def merged(self, newer: ParameterSets) -> ParameterSets:
        return ParameterSets(
            vps=newer.vps or self.vps,
            sps=newer.sps or self.sps,
            pps=newer.pps or self.pps,
            keyframe=newer.keyframe,
        )


def _checked_ps(nal: bytes) -> bytes:
    if len(nal) > MAX_PARAMETER_SET:
        raise BitstreamError("parameter set exceeds the size limit", code="media.bitstream_invalid")
    return bytes(nal)


def parameter_sets(codec: str, access_unit: bytes) -> ParameterSets:
    """VPS/SPS/PPS and the random-access flag of one Annex B access unit."""
    vps = sps = pps = b""
    key = False
    for nal in split_annexb(access_unit):
        if codec == "h264":
            t = h264_type(nal)
            if t == H264_SPS and not sps:
                if len(nal) < 4:
                    raise BitstreamError("H.264 SPS too short", code="media.bitstream_truncated")
                sps = _checked_ps(nal)
            elif t == H264_PPS and not pps:
                pps = _checked_ps(nal)
            elif t == H264_IDR:
                key = True
        elif codec == "h265":
            t = h265_type(nal)
            if t == H265_VPS and not vps:
                vps = _checked_ps(nal)
            elif t == H265_SPS and not sps:
                if len(nal) < 15:
                    raise BitstreamError("H.265 SPS too short", code="media.bitstream_truncated")
                sps = _checked_ps(nal)
            elif t == H265_PPS and not pps:
                pps = _checked_ps(nal)
            elif H265_IRAP_FIRST <= t <= H265_IRAP_LAST:
                key = True
        else:
            raise BitstreamError(f"not a video codec: {codec}", code="media.codec_unsupported")
    return ParameterSets(vps=vps, sps=sps, pps=pps, keyframe=key)


def iter_nal_types(codec: str, access_unit: bytes) -> Iterator[int]:
    for nal in split_annexb(access_unit):
        yield h264_type(nal) if codec == "h264" else h265_type(nal)


def h264_profile_level_id(sps: bytes) -> str:
    """RFC 6184 profile-level-id: profile_idc, constraint flags, level_idc as 6 hex digits."""
    if len(sps) < 4 or h264_type(sps) != H264_SPS:
        raise BitstreamError("not an H.264 SPS", code="media.bitstream_invalid")
    return sps[1:4].hex()


@dataclass(frozen=True, slots=True)
class H265ProfileTierLevel:
    profile_space: int
    tier_flag: int
    profile_id: int
    level_id: int


def h265_profile_tier_level(sps: bytes) -> H265ProfileTierLevel:
    """general_profile_tier_level of an H.265 SPS (RFC 7798 profile-id / tier-flag / level-id)."""
    if len(sps) < 3 or h265_type(sps) != H265_SPS:
        raise BitstreamError("not an H.265 SPS", code="media.bitstream_invalid")
    rbsp = unescape_rbsp(sps[2:])
    # rbsp[0]: sps_video_parameter_set_id(4) max_sub_layers_minus1(3) temporal_id_nesting(1);
    # then profile_tier_level: 1 byte space/tier/profile, 4 bytes compat flags, 6 bytes
    # constraint flags, 1 byte general_level_idc.
    if len(rbsp) < 13:
        raise BitstreamError("H.265 SPS too short", code="media.bitstream_truncated")
    b = rbsp[1]
    return H265ProfileTierLevel(profile_space=b >> 6, tier_flag=(b >> 5) & 1, profile_id=b & 0x1F, level_id=rbsp[12])


# ISO/IEC 14496-3 1.6.3.4 samplingFrequencyIndex
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


@dataclass(frozen=True, slots=True)
class AacConfig:
    object_type: int
    sample_rate: int
    channels: int


def aac_audio_specific_config(sample_rate: int, channels: int, object_type: int = 2) -> bytes:
    """Two-byte AudioSpecificConfig for AAC (default AAC-LC)."""
    if sample_rate not in AAC_SAMPLE_RATES:
        raise BitstreamError("AAC sample rate has no index", code="media.codec_unsupported")
    if not 1 <= channels <= 7 or not 1 <= object_type <= 30:
        raise BitstreamError("AAC channels or object type out of range", code="media.codec_unsupported")
    idx = AAC_SAMPLE_RATES.index(sample_rate)
    v = (object_type << 11) | (idx << 7) | (channels << 3)
    return v.to_bytes(2, "big")


def parse_aac_config(asc: bytes) -> AacConfig:
    """Parse the fixed part of an AudioSpecificConfig (object type < 31, indexed or explicit rate)."""
    if len(asc) < 2 or len(asc) > 64:
        raise BitstreamError("AudioSpecificConfig length invalid", code="media.bitstream_invalid")
    bits = int.from_bytes(asc, "big")
    total = len(asc) * 8

    def take(pos: int, n: int) -> int:
        if pos + n > total:
            raise BitstreamError("AudioSpecificConfig truncated", code="media.bitstream_truncated")
        return (bits >> (total - pos - n)) & ((1 << n) - 1)

    object_type = take(0, 5)
    if object_type == 31:
        raise BitstreamError("escaped AAC object types unsupported", code="media.codec_unsupported")
    idx = take(5, 4)
    pos = 9
    if idx == 15:
        rate = take(pos, 24)
        pos += 24
    elif idx < len(AAC_SAMPLE_RATES):
        rate = AAC_SAMPLE_RATES[idx]
    else:
        raise BitstreamError("reserved AAC sampling index", code="media.bitstream_invalid")
    channels = take(pos, 4)
    if channels == 0 or channels > 7:
        raise BitstreamError("AAC channel configuration unsupported", code="media.codec_unsupported")
    return AacConfig(object_type=object_type, sample_rate=rate, channels=channels)
