"""Shared helpers for the media tests: small settings, decoding, tone analysis."""

from __future__ import annotations

import array
import asyncio
import math
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest

from agent.media.frames import EncodedFrame, FrameSubscription
from agent.media.overlay import read_counter


def small_settings(
    main_codec: str = "h264",
    sub_codec: str = "h264",
    main_audio: str = "aac",
    sub_audio: str = "pcmu",
    audio_input: str = "external_mic",
    gain_db: float = 0.0,
    noise_filter: bool = False,
) -> dict[str, Any]:
    return {
        "video": {
            "main": {"codec": main_codec, "width": 320, "height": 180, "fps": 15, "bitrate_kbps": 400, "gop": 15},
            "sub": {"codec": sub_codec, "width": 256, "height": 144, "fps": 10, "bitrate_kbps": 200, "gop": 10},
        },
        "audio": {
            "input": audio_input,
            "gain_db": gain_db,
            "noise_filter": noise_filter,
            "streams": {"main": {"enabled": True, "codec": main_audio}, "sub": {"enabled": True, "codec": sub_audio}},
        },
    }


class CounterReader:
    """Decodes a subscription's video with PyAV and reads the burned-in counter of each picture."""

    def __init__(self, codec: str) -> None:
        self.dec = av.CodecContext.create("h264" if codec == "h264" else "hevc", "r")
        self.sizes: set[tuple[int, int]] = set()

    def feed(self, frame: EncodedFrame) -> list[int]:
        out = []
        for pic in self.dec.decode(av.Packet(frame.data)):
            plane = pic.planes[0]
            self.sizes.add((pic.width, pic.height))
            out.append(read_counter(bytes(plane), plane.line_size, pic.width, pic.height))
        return out


async def read_counters(sub: FrameSubscription, codec: str, n: int, limit_s: float = 20.0) -> list[int]:
    reader = CounterReader(codec)
    counters: list[int] = []
    async with asyncio.timeout(limit_s):
        async for frame in sub:
            if frame.kind != "video":
                continue
            counters.extend(reader.feed(frame))
            if len(counters) >= n:
                break
    return counters


async def eventually(predicate: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Wait for a condition a pipeline thread makes true (threads have no asyncio.Event)."""
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - the state lives in another thread
            await asyncio.sleep(0.02)


def dominant_frequency(samples: array.array[int], rate: int) -> float:
    """Tone frequency from zero crossings over the part of the signal that is not silence."""
    peak = max(abs(s) for s in samples)
    thresh = peak * 0.3
    idx = [i for i, s in enumerate(samples) if abs(s) > thresh]
    lo, hi = idx[0], idx[-1]
    seg = samples[lo : hi + 1]
    crossings = [i for i in range(1, len(seg)) if (seg[i - 1] < 0) != (seg[i] < 0)]
    if len(crossings) < 4:
        return 0.0
    span = crossings[-1] - crossings[0]
    return (len(crossings) - 1) / 2 / (span / rate)


def rms(samples: array.array[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


def decode_audio(frames: list[EncodedFrame], codec: str, rate: int, config: bytes = b"") -> array.array[int]:
    name = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw", "aac": "aac"}[codec]
    ctx: Any = av.CodecContext.create(name, "r")
    ctx.sample_rate = rate
    ctx.layout = "mono"
    if config:
        ctx.extradata = config
    res = av.AudioResampler(format="s16", layout="mono", rate=rate)
    pcm = array.array("h")
    for f in frames:
        for dec in ctx.decode(av.Packet(f.data)):
            for out in res.resample(dec):
                pcm.frombytes(bytes(out.planes[0])[: out.samples * 2])
    return pcm


@pytest.fixture
def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        pytest.fail("ffmpeg (Debian package) is required for the media tests")
    return path


def make_media_file(ffmpeg: str, path: Path, *, vcodec: str = "libx264", acodec: str = "aac",
                    rate: int = 16000, seconds: float = 2.0, size: str = "320x180", fps: int = 15) -> Path:
    """A real file written by the ffmpeg CLI (a peer independent of our encoders)."""
    cmd = [ffmpeg, "-nostdin", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=600:sample_rate={rate}:duration={seconds}",
           "-c:v", vcodec, "-g", str(fps), "-bf", "0", "-pix_fmt", "yuv420p"]
    if vcodec == "libx264":
        cmd += ["-preset", "ultrafast"]
    elif vcodec == "libx265":
        cmd += ["-preset", "ultrafast", "-x265-params", "log-level=error"]
    cmd += ["-c:a", acodec, "-ac", "1", "-ar", str(rate), str(path)]
    subprocess.run(cmd, check=True, timeout=60)
    return path
