"""Two-way audio: the talk sink writes a WAV per session whose tone we verify, one talker at a
time, RFC 3640 payload parsing with an attack table, atomic finalization and bounded length."""

from __future__ import annotations

import array
import struct
import wave
from pathlib import Path

import av
import pytest

from agent.media.encode import AudioEncoder
from agent.media.errors import BitstreamError, MediaError, TalkBusy
from agent.media.mediaconfig import AudioConfig
from agent.media.talk import DeviceAudioSink, split_aac_hbr
from tests.media.conftest import dominant_frequency


def _tone_packets(codec: str, rate: int, freq: int, seconds: float) -> tuple[list[bytes], bytes]:
    """RTP payloads a talker would send: our encoder + RFC 3640 AU headers for AAC."""
    enc = AudioEncoder("talk", AudioConfig(codec, rate, "line_in", "", 0.0, False, 32))
    src = av.open(f"sine=frequency={freq}:sample_rate={rate}:duration={seconds}", format="lavfi")
    payloads = []
    for frame in src.decode(audio=0):
        for ef in enc.encode(frame, 0.0):
            if codec == "aac":
                payloads.append(struct.pack(">HH", 16, len(ef.data) << 3) + ef.data)
            else:
                payloads.append(ef.data)
    src.close()
    return payloads, enc.description().config


def _read_wav(path: Path) -> tuple[int, array.array[int]]:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = array.array("h", w.readframes(w.getnframes()))
        return w.getframerate(), pcm


@pytest.mark.parametrize(("codec", "rate", "freq"), [("pcmu", 8000, 700), ("pcma", 8000, 1200), ("aac", 16000, 900)])
async def test_talk_writes_wav_with_the_sent_tone(tmp_path: Path, codec: str, rate: int, freq: int) -> None:
    sink = DeviceAudioSink(output="wav", wav_dir=tmp_path / "talk")
    payloads, config = _tone_packets(codec, rate, freq, 1.0)
    ch = sink.open(codec, rate, config=config)
    for p in payloads:
        ch.write(p)
    assert ch.path is not None and not ch.path.exists()  # nothing visible before close
    await ch.aclose()
    assert ch.path.exists() and (ch.path.stat().st_mode & 0o777) == 0o600
    got_rate, pcm = _read_wav(ch.path)
    assert got_rate == rate
    assert len(pcm) >= 0.85 * rate  # ~1 s (AAC loses its encoder's tail)
    assert abs(dominant_frequency(pcm, rate) - freq) < freq * 0.02
    assert ch.dropped == 0 and ch.decode_errors == 0 and sink.last_path == ch.path


async def test_aac_without_config_uses_lc_default(tmp_path: Path) -> None:
    sink = DeviceAudioSink(output="wav", wav_dir=tmp_path)
    payloads, _ = _tone_packets("aac", 16000, 500, 0.5)
    ch = sink.open("aac", 16000)  # SDP without config=: AAC-LC at the RTP clock rate
    for p in payloads:
        ch.write(p)
    ch.close()  # non-blocking: the slot is free at once, the file follows
    assert not sink.busy
    ch.wait_closed()
    assert ch.path is not None
    rate, pcm = _read_wav(ch.path)
    assert abs(dominant_frequency(pcm, rate) - 500) < 15


async def test_one_talker_at_a_time(tmp_path: Path) -> None:
    sink = DeviceAudioSink(output="wav", wav_dir=tmp_path)
    first = sink.open("pcmu", 8000)
    with pytest.raises(TalkBusy) as ei:
        sink.open("pcma", 8000)
    assert ei.value.code == "media.talk_busy" and ei.value.status == 409
    assert sink.status()["active"] and sink.status()["active_codec"] == "pcmu"
    await first.aclose()
    second = sink.open("pcma", 8000)
    await second.aclose()
    assert first.path != second.path and sink.sessions == 2
    with pytest.raises(MediaError):
        second.write(b"\xff" * 160)  # closed


async def test_session_length_is_bounded(tmp_path: Path) -> None:
    sink = DeviceAudioSink(output="wav", wav_dir=tmp_path, max_seconds=1)
    ch = sink.open("pcmu", 8000)
    for _ in range(100):  # 2 s of 20 ms packets
        ch.write(b"\x00" * 160)
    await ch.aclose()
    assert ch.path is not None
    _, pcm = _read_wav(ch.path)
    assert len(pcm) == 8000


BAD_TALK_OPEN = [
    ("unknown codec", "opus", 48000, "media.codec_unsupported"),
    ("g711 at 16 kHz", "pcmu", 16000, "media.codec_unsupported"),
    ("absurd rate", "aac", 1000, "media.codec_unsupported"),
]


@pytest.mark.parametrize(("name", "codec", "rate", "code"), BAD_TALK_OPEN, ids=[b[0] for b in BAD_TALK_OPEN])
def test_bad_talk_open(tmp_path: Path, name: str, codec: str, rate: int, code: str) -> None:
    sink = DeviceAudioSink(output="wav", wav_dir=tmp_path)
    with pytest.raises(MediaError) as ei:
        sink.open(codec, rate)
    assert ei.value.code == code
    assert not sink.busy  # a refused open leaves no session behind


def test_aac_config_must_match_clock(tmp_path: Path) -> None:
    sink = DeviceAudioSink(output="wav", wav_dir=tmp_path)
    with pytest.raises(BitstreamError):
        sink.open("aac", 16000, config=bytes.fromhex("1588"))  # 8 kHz config on a 16 kHz clock


def test_split_aac_hbr_multiple_aus() -> None:
    payload = struct.pack(">HHH", 32, 3 << 3, 2 << 3) + b"abc" + b"de"
    assert split_aac_hbr(payload) == [b"abc", b"de"]


BAD_HBR = [
    ("empty", b"", "media.bitstream_truncated"),
    ("zero header length", b"\x00\x00abc", "media.bitstream_invalid"),
    ("header length not 16-bit aligned", b"\x00\x0d\x00\x18abc", "media.bitstream_invalid"),
    ("headers beyond payload", b"\x00\x40\x00\x18", "media.bitstream_truncated"),
    ("AU beyond payload (fragment)", b"\x00\x10\x00\x50ab", "media.bitstream_truncated"),
    ("zero-size AU", b"\x00\x10\x00\x00", "media.bitstream_truncated"),
    ("trailing bytes", b"\x00\x10\x00\x08aXX", "media.bitstream_invalid"),
    ("oversized", b"\x00\x10" + b"\x00" * 9000, "media.payload_too_large"),
]


@pytest.mark.parametrize(("name", "payload", "code"), BAD_HBR, ids=[b[0] for b in BAD_HBR])
def test_bad_aac_hbr(name: str, payload: bytes, code: str) -> None:
    with pytest.raises(BitstreamError) as ei:
        split_aac_hbr(payload)
    assert ei.value.code == code


async def test_garbage_aac_is_counted_not_fatal(tmp_path: Path) -> None:
    sink = DeviceAudioSink(output="wav", wav_dir=tmp_path)
    ch = sink.open("aac", 16000)
    for _ in range(5):
        ch.write(struct.pack(">HH", 16, 40 << 3) + bytes(range(40)))
    await ch.aclose()
    assert ch.path is not None and ch.path.exists() and ch.error is None
    assert ch.decode_errors == 5


ALSA_SCRIPT = """
import struct, sys
from pathlib import Path
import av
from agent.media.talk import DeviceAudioSink
sink = DeviceAudioSink(output="alsa", wav_dir=Path(sys.argv[1]), alsa_device="talktest")
ch = sink.open("pcma", 8000)
src = av.open("sine=frequency=800:sample_rate=8000:duration=1", format="lavfi")
enc = av.CodecContext.create("pcm_alaw", "w")
enc.sample_rate = 8000; enc.layout = "mono"; enc.format = "s16"; enc.open()
for f in src.decode(audio=0):
    for p in enc.encode(f):
        ch.write(bytes(p))
ch.close()
ch.wait_closed()
assert ch.error is None, ch.error
"""


def test_alsa_output_through_alsa_lib(tmp_path: Path) -> None:
    """The device path: PyAV's ALSA muxer into a real alsa-lib PCM (the 'file' plugin captures
    what the speaker would get). Own process: alsa-lib reads ALSA_CONFIG_PATH once."""
    import os
    import subprocess
    import sys

    raw = tmp_path / "speaker.raw"
    conf = tmp_path / "asound.conf"
    conf.write_text(
        f'pcm.talktest {{ type file slave {{ pcm "nullsink" }} file "{raw}" format "raw" }}\n'
        "pcm.nullsink { type null }\n"
    )
    env = dict(os.environ, ALSA_CONFIG_PATH=str(conf))
    subprocess.run([sys.executable, "-c", ALSA_SCRIPT, str(tmp_path)], check=True, env=env, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])
    pcm = array.array("h", raw.read_bytes())
    assert len(pcm) >= 7900
    assert abs(dominant_frequency(pcm, 8000) - 800) < 16
