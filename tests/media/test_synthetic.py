"""The synthetic camera through the real pipeline: decodable video at the configured size with an
advancing burned-in counter, and each audio codec decoding back to the configured input's tone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.media.errors import BitstreamError
from agent.media.frames import EncodedFrame, StreamHub
from agent.media.mediaconfig import parse_media_config, stream_config
from agent.media.overlay import BITS, burn_in, cell_size, draw_code, read_counter
from agent.media.pipeline import StreamPipeline
from tests.media.conftest import decode_audio, dominant_frequency, rms, small_settings


def test_code_roundtrip_raw_plane() -> None:
    w, h, stride = 320, 180, 336
    plane = bytearray(b"\x80" * stride * h)
    for value in (0, 1, 12345, 0xFFFFFFFF, 0xA5A5A5A5):
        burn_in(plane, stride, w, h, value, 1_700_000_000.25)
        assert read_counter(bytes(plane), stride, w, h) == value


def test_unreadable_code_is_an_error_not_a_number() -> None:
    plane = bytes(b"\x80" * 320 * 180)
    with pytest.raises(BitstreamError) as ei:
        read_counter(plane, 320, 320, 180)
    assert ei.value.code == "media.code_unreadable"
    with pytest.raises(BitstreamError):
        draw_code(bytearray(40 * 10), 40, 40, 10, 1)  # 32 cells cannot fit in 40 px


def test_cell_fits_small_frames() -> None:
    for w in (160, 256, 320, 640, 1920):
        assert BITS * cell_size(w) <= w


async def _run_stream(settings: dict[str, object], name: str, n_video: int, media: dict[str, object] | None = None,
                      ) -> tuple[list[int], list[EncodedFrame], StreamHub, set[tuple[int, int]]]:
    mc = parse_media_config(media or {}, Path("/nonexistent"))
    cfg = stream_config(settings, name, mc)
    hub = StreamHub(name)
    p = StreamPipeline(hub, cfg, mc.backoff)
    p.start()
    try:
        sub = hub.subscribe()
        from tests.media.conftest import CounterReader

        reader = CounterReader(cfg.video.codec)
        counters: list[int] = []
        audio: list[EncodedFrame] = []
        async with asyncio.timeout(30):
            async for f in sub:
                if f.kind == "audio":
                    audio.append(f)
                else:
                    counters.extend(reader.feed(f))
                if len(counters) >= n_video:
                    break
        sub.close()
        return counters, audio, hub, reader.sizes
    finally:
        await asyncio.to_thread(p.stop)


@pytest.mark.parametrize("codec", ["h264", "h265"])
async def test_synthetic_video_decodes_with_advancing_counter(codec: str) -> None:
    settings = small_settings(main_codec=codec)
    counters, _, hub, sizes = await _run_stream(settings, "main", 20)
    assert sizes == {(320, 180)}
    assert counters[:20] == list(range(20))  # first picture is frame 0, none lost or repeated
    desc = hub.describe()
    assert desc.ready and desc.video is not None and desc.video.codec == codec
    assert (desc.video.width, desc.video.height, desc.video.fps) == (320, 180, 15)


@pytest.mark.parametrize(
    ("codec", "rate", "audio_input", "freq"),
    [("pcmu", 8000, "builtin_mic", 440), ("pcma", 8000, "line_in", 1500), ("aac", 16000, "external_mic", 1000)],
)
async def test_synthetic_audio_codecs(codec: str, rate: int, audio_input: str, freq: int) -> None:
    settings = small_settings(main_audio=codec, audio_input=audio_input)
    _, audio, hub, _ = await _run_stream(settings, "main", 30)
    desc = hub.describe()
    assert desc.audio is not None and desc.audio.codec == codec and desc.audio.sample_rate == rate
    assert all(f.codec == codec and f.clock_rate == rate for f in audio)
    if codec == "aac":
        assert desc.audio.config[:2].hex() == "1408" and "config=1408" in (desc.audio.fmtp() or "")
        assert all(f.pts % 1024 == 0 for f in audio)
    else:
        assert desc.audio.static_payload_type == (0 if codec == "pcmu" else 8)
        assert all(len(f.data) == 160 for f in audio)  # 20 ms packets
    pts = [f.pts for f in audio]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    pcm = decode_audio(audio, codec, rate, desc.audio.config)
    assert len(pcm) >= rate  # ~2 s of video time gives well over 1 s of audio
    assert abs(dominant_frequency(pcm, rate) - freq) < freq * 0.03


async def test_gain_and_noise_filter_apply() -> None:
    loud = small_settings(sub_audio="pcmu", gain_db=0.0)
    quiet = small_settings(sub_audio="pcmu", gain_db=-12.0, noise_filter=True)
    _, a_loud, _, _ = await _run_stream(loud, "sub", 15)
    _, a_quiet, _, _ = await _run_stream(quiet, "sub", 15)
    r_loud = rms(decode_audio(a_loud, "pcmu", 8000)[2000:])
    r_quiet = rms(decode_audio(a_quiet, "pcmu", 8000)[2000:])
    ratio_db = 20 * __import__("math").log10(r_quiet / r_loud)
    assert -14.5 < ratio_db < -9.5  # -12 dB gain; afftdn leaves a pure tone nearly untouched


def test_starved_source_pauses_instead_of_bursting() -> None:
    """After a CPU stall the synthetic camera must not emit frames faster than its rate."""
    import threading
    import time as _time
    from typing import Any

    from agent.media.sources import SyntheticSource

    cfg = stream_config(small_settings(), "main", parse_media_config({}, Path("/nonexistent")))
    cfg = __import__("dataclasses").replace(cfg, audio=None)
    src = SyntheticSource(cfg)
    stop = threading.Event()
    times: list[float] = []

    class StallingSink:
        def video_frame(self, frame: Any, pts90: int, wallclock: float) -> None:
            times.append(_time.monotonic())
            if len(times) == 5:
                _time.sleep(1.5)  # the encoder thread was starved for 1.5 s
            if len(times) == 25:
                stop.set()

    src.run(StallingSink(), stop)  # type: ignore[arg-type]
    after = times[5:]
    rate = (len(after) - 1) / (after[-1] - after[0])
    assert src.stalls == 1 and rate < 15 * 1.6  # configured 15 fps; only the 0.5 s grace is caught up
    assert src.counter == 25  # counter stays contiguous: nothing skipped, the clock paused
