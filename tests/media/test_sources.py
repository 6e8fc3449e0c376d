"""File-in-a-loop (remux without re-encode, and transcode), upstream RTSP failure, restarts
with exponential backoff, and recovery - using real files written by the ffmpeg CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import pytest

from agent.media.annexb import avcc_to_annexb, parameter_sets, split_annexb
from agent.media.backoff import Backoff
from agent.media.frames import EncodedFrame, StreamHub
from agent.media.mediaconfig import BackoffConfig, parse_media_config, stream_config
from agent.media.pipeline import StreamPipeline
from agent.media.sources import DemuxSource, make_source
from tests.media.conftest import decode_audio, dominant_frequency, eventually, make_media_file, small_settings

FAST = BackoffConfig(initial_s=0.2, max_s=0.8, healthy_s=5.0)


def test_backoff_schedule() -> None:
    b = Backoff(initial_s=0.5, max_s=4.0, healthy_s=10.0)
    b.started(0.0)
    assert [b.failed(t) for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.started(100.0)
    assert b.failed(111.0) == 0.5  # ran healthy for 11 s: a new incident starts at the bottom again
    b.started(120.0)
    assert b.failed(121.0) == 1.0  # crashed right away: keep backing off


async def _collect(hub: StreamHub, n_video: int, limit_s: float = 20) -> list[EncodedFrame]:
    sub = hub.subscribe()
    out: list[EncodedFrame] = []
    async with asyncio.timeout(limit_s):
        async for f in sub:
            out.append(f)
            if sum(1 for x in out if x.kind == "video") >= n_video:
                break
    sub.close()
    return out


@pytest.mark.parametrize(("codec", "vcodec"), [("h264", "libx264"), ("h265", "libx265")])
async def test_file_loop_remuxes_without_reencode(tmp_path: Path, ffmpeg: str, codec: str, vcodec: str) -> None:
    path = make_media_file(ffmpeg, tmp_path / "clip.mp4", vcodec=vcodec, seconds=1.0, fps=15)
    settings = small_settings(main_codec=codec, main_audio="aac")
    mc = parse_media_config({"source": "file", "files": {"main": str(path)}}, tmp_path)
    cfg = stream_config(settings, "main", mc)
    hub = StreamHub("main")
    src = make_source(cfg)
    assert isinstance(src, DemuxSource)
    p = StreamPipeline(hub, cfg, FAST, source_factory=lambda c: src)
    generations: list[int] = []
    hub.on_description(lambda d: generations.append(d.generation))
    p.start()
    try:
        frames = await _collect(hub, 40)  # > 15 frames in the file: it must loop
    finally:
        await asyncio.to_thread(p.stop)
    assert src.remuxed_video and src.remuxed_audio
    # the loop passes keep the description's generation: RTSP clients stay connected
    assert len(set(generations)) <= 2, generations  # pipeline start, then the file's real size at most
    video = [f for f in frames if f.kind == "video"]
    # the file's own packets, in Annex B with SPS/PPS in front of each keyframe (from avcC)
    with av.open(str(path)) as c:
        originals = [bytes(pkt) for pkt in c.demux(video=0) if pkt.size]
    assert len(originals) == 15
    for ours, theirs in zip(video[:15], originals, strict=True):
        # every NAL unit of the file's packet is carried unchanged: not re-encoded
        assert set(split_annexb(avcc_to_annexb(theirs))) <= set(split_annexb(ours.data))
    assert [f.data for f in video[15:30]] == [f.data for f in video[:15]]  # second pass, same bytes
    keys = [f for f in video if f.keyframe]
    assert len(keys) >= 2 and all(parameter_sets(codec, k.data).sps for k in keys)
    assert {f.codec for f in video} == {codec}
    pts = [f.pts for f in video]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)  # monotonic across the loop
    desc = hub.describe()
    assert desc.ready and desc.audio is not None and desc.audio.config[:2].hex() == "1408"
    audio = [f for f in frames if f.kind == "audio"]
    pcm = decode_audio(audio[:15], "aac", 16000, desc.audio.config)
    assert abs(dominant_frequency(pcm, 16000) - 600) < 20


@pytest.mark.parametrize(
    ("acodec", "rate", "want", "audio_remuxed"),
    [("pcm_s16le", 8000, "pcmu", False), ("aac", 16000, "aac", True)],
)
async def test_file_with_other_video_codec_is_transcoded(
    tmp_path: Path, ffmpeg: str, acodec: str, rate: int, want: str, audio_remuxed: bool
) -> None:
    path = make_media_file(ffmpeg, tmp_path / "clip.mkv", vcodec="mpeg4", acodec=acodec, rate=rate, seconds=1.0)
    mc = parse_media_config({"source": "file", "files": {"main": str(path)}}, tmp_path)
    cfg = stream_config(small_settings(main_audio=want), "main", mc)
    hub = StreamHub("main")
    src = make_source(cfg)
    p = StreamPipeline(hub, cfg, FAST, source_factory=lambda c: src)
    p.start()
    try:
        frames = await _collect(hub, 10)
    finally:
        await asyncio.to_thread(p.stop)
    assert isinstance(src, DemuxSource) and not src.remuxed_video and src.remuxed_audio == audio_remuxed
    video = [f for f in frames if f.kind == "video"]
    assert video[0].codec == "h264" and video[0].keyframe
    audio = [f for f in frames if f.kind == "audio"]
    assert audio and {f.codec for f in audio} == {want}
    desc = hub.describe()
    assert desc.audio is not None and desc.audio.codec == want
    if audio_remuxed:
        with av.open(str(path)) as c:
            assert desc.audio.config == bytes(c.streams.audio[0].codec_context.extradata or b"")
    pcm = decode_audio(audio, want, rate, desc.audio.config)
    assert abs(dominant_frequency(pcm, rate) - 600) < 20


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again at once: connections are refused


async def test_failing_upstream_restarts_with_backoff(tmp_path: Path) -> None:
    url = f"rtsp://oem:s3cret-pass@127.0.0.1:{_refused_port()}/main"
    mc = parse_media_config({"source": "rtsp", "upstream": {"main": url}, "upstream_timeout_s": 1}, tmp_path)
    cfg = stream_config(small_settings(), "main", mc)
    hub = StreamHub("main")
    attempts: list[float] = []

    def factory(c: Any) -> Any:
        attempts.append(time.monotonic())
        return make_source(c, upstream_timeout_s=1.0)

    p = StreamPipeline(hub, cfg, FAST, source_factory=factory)
    p.start()
    try:
        await eventually(lambda: len(attempts) >= 4)
        st = p.status()
        assert st["state"] in ("backoff", "running") and st["restarts"] >= 3
        assert st["last_error_code"] == "media.source_open" and "refused" in st["last_error"].lower()
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.18 and gaps[1] >= 0.38 and gaps[2] >= 0.75  # 0.2, 0.4, 0.8 (cap)
        assert st["fps_measured"] == 0.0
        assert "s3cret" not in json.dumps(st)  # upstream credentials never shown in status
    finally:
        await asyncio.to_thread(p.stop)
    assert p.status()["state"] == "stopped"


async def test_source_recovers_when_input_appears(tmp_path: Path, ffmpeg: str) -> None:
    path = tmp_path / "late.mp4"
    mc = parse_media_config({"source": "file", "files": {"main": str(path)}}, tmp_path)
    cfg = stream_config(small_settings(), "main", mc)
    hub = StreamHub("main")
    p = StreamPipeline(hub, cfg, FAST)
    p.start()
    try:
        await eventually(lambda: p.restarts >= 2)
        assert p.status()["last_error_code"] == "media.source_open"
        make_media_file(ffmpeg, tmp_path / "tmp.mp4", seconds=1.0)
        (tmp_path / "tmp.mp4").rename(path)
        frames = await _collect(hub, 10)
        assert next(f for f in frames if f.kind == "video").keyframe and p.status()["state"] == "running"
    finally:
        await asyncio.to_thread(p.stop)


async def test_encoder_failure_shows_in_status(tmp_path: Path) -> None:
    mc = parse_media_config({"encoders": {"h264": "h264_v4l2m2m"}}, tmp_path)
    cfg = stream_config(small_settings(), "main", mc)
    assert cfg.video.encoder == "h264_v4l2m2m"  # a SoC encoder is chosen by FFmpeg name
    p = StreamPipeline(StreamHub("main"), cfg, FAST)
    p.start()
    try:
        await eventually(lambda: p.restarts >= 1)
        assert p.status()["last_error_code"] in ("media.encoder_failed", "media.encoder_unavailable")
    finally:
        await asyncio.to_thread(p.stop)


def test_capture_source_without_v4l2_fails_cleanly(tmp_path: Path) -> None:
    """PyPI's PyAV has no V4L2 input: the capture source must say so instead of crashing."""
    import threading

    mc = parse_media_config({"source": "capture", "video_devices": {"main": str(tmp_path / "video9")}}, tmp_path)
    cfg = replace(stream_config(small_settings(), "main", mc), audio=None)
    src = make_source(cfg)
    with pytest.raises(Exception) as ei:
        src.run(None, threading.Event())  # type: ignore[arg-type]
    assert getattr(ei.value, "code", "") in ("media.format_unavailable", "media.source_open")


@pytest.fixture
def gst_upstream() -> Any:
    import subprocess

    from tests.conftest import need

    need("/usr/bin/python3")
    proc = subprocess.Popen(["/usr/bin/python3", str(Path(__file__).with_name("gst_upstream.py"))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip())
        yield f"rtsp://127.0.0.1:{port}/cam"
    finally:
        proc.kill()
        proc.wait(10)


async def test_upstream_rtsp_remuxed(tmp_path: Path, gst_upstream: str) -> None:
    """Pulls a real RTSP stream (gst-rtsp-server, x264 + PCMU) and passes it through unchanged."""
    mc = parse_media_config({"source": "rtsp", "upstream": {"main": gst_upstream}}, tmp_path)
    cfg = stream_config(small_settings(main_audio="pcmu"), "main", mc)
    hub = StreamHub("main")
    src = make_source(cfg)
    p = StreamPipeline(hub, cfg, FAST, source_factory=lambda c: src)
    p.start()
    try:
        frames = await _collect(hub, 20, limit_s=30)
    finally:
        await asyncio.to_thread(p.stop)
    assert isinstance(src, DemuxSource) and src.remuxed_video and src.remuxed_audio
    video = [f for f in frames if f.kind == "video"]
    assert video[0].keyframe and parameter_sets("h264", video[0].data).sps
    dec: Any = av.CodecContext.create("h264", "r")
    pics = [pic for f in video for pic in dec.decode(av.Packet(f.data))]
    assert len(pics) >= 15 and {(x.width, x.height) for x in pics} == {(320, 180)}
    desc = hub.describe()
    assert desc.ready and desc.video is not None and (desc.video.width, desc.video.height) == (320, 180)
    audio = [f for f in frames if f.kind == "audio"]
    assert audio and all(f.codec == "pcmu" and f.clock_rate == 8000 for f in audio)
    pcm = decode_audio(audio, "pcmu", 8000)
    assert abs(dominant_frequency(pcm, 8000) - 500) < 15


async def test_slow_encoder_drops_at_source_not_in_capture(tmp_path: Path) -> None:
    """A source producing faster than the encoder: pictures are dropped before encoding (counted),
    the capture side never waits, and what is encoded still decodes."""
    import threading

    from agent.media.mediaconfig import StreamConfig

    class Burst:
        def __init__(self) -> None:
            self.calls_s: list[float] = []
            self.encoded_when_done = -1

        def run(self, sink: Any, stop: threading.Event) -> None:
            src = av.open("testsrc2=size=320x180:rate=15", format="lavfi")
            frames = [f for _, f in zip(range(60), src.decode(video=0), strict=False)]
            src.close()
            for i, f in enumerate(frames):
                t = time.monotonic()
                sink.video_frame(f, i * 6000, time.time())
                self.calls_s.append(time.monotonic() - t)
            self.encoded_when_done = p.video_frames
            stop.wait()

    cfg: StreamConfig = replace(stream_config(small_settings(), "main", parse_media_config({}, tmp_path)),
                                audio=None, raw_queue_frames=2)
    burst = Burst()
    hub = StreamHub("main")
    p = StreamPipeline(hub, cfg, FAST, source_factory=lambda c: burst)
    p.start()
    try:
        await eventually(lambda: len(burst.calls_s) == 60 and p.video_frames + p.dropped_raw == 60)
        # Structural, not timed: the burst of 60 pictures was fully handed over while the encoder
        # had finished only a few (capture never waited for it), and the excess was dropped.
        # (A capture that waited for each encode would drop nothing and end with ~60 encoded.)
        assert p.dropped_raw > 0 and 0 <= burst.encoded_when_done < 30
        frames = await _collect(hub, min(p.video_frames, 2))
        assert frames[0].keyframe
    finally:
        await asyncio.to_thread(p.stop)


async def test_remux_inserts_parameter_sets_from_sdp(tmp_path: Path) -> None:
    """Upstreams that send SPS/PPS only in SDP (extradata): keyframes get them put in front."""
    import threading

    from agent.media.encode import VideoEncoder

    cfg = stream_config(small_settings(), "main", parse_media_config({}, tmp_path))
    cfg = replace(cfg, audio=None)
    enc = VideoEncoder("main", cfg.video)
    src = av.open("testsrc2=size=320x180:rate=15", format="lavfi")
    aus = [f for i, pic in zip(range(3), src.decode(video=0), strict=False) for f in enc.encode(pic, i * 6000, 0.0)]
    src.close()
    ps = parameter_sets("h264", aus[0].data)
    sdp_sets = b"\x00\x00\x00\x01" + ps.sps + b"\x00\x00\x00\x01" + ps.pps
    bare_key = b"".join(b"\x00\x00\x00\x01" + n for n in split_annexb(aus[0].data) if n not in (ps.sps, ps.pps))

    class SdpOnlyUpstream:
        def run(self, sink: Any, stop: threading.Event) -> None:
            sink.passthrough_info(320, 180, 15.0, None, sdp_sets)
            sink.video_packet("h264", bare_key, True, 0, time.time())
            sink.video_packet("h264", aus[1].data, False, 6000, time.time())
            stop.wait()

    hub = StreamHub("main")
    p = StreamPipeline(hub, cfg, FAST, source_factory=lambda c: SdpOnlyUpstream())
    p.start()
    try:
        frames = await _collect(hub, 2)
    finally:
        await asyncio.to_thread(p.stop)
    assert frames[0].data == sdp_sets + bare_key
    assert hub.describe().ready
    dec: Any = av.CodecContext.create("h264", "r")
    assert [pic for f in frames for pic in dec.decode(av.Packet(f.data))]


CAPTURE_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from agent.media.frames import StreamHub
from agent.media.mediaconfig import BackoffConfig, parse_media_config, stream_config
from agent.media.pipeline import StreamPipeline
from tests.media.conftest import decode_audio, dominant_frequency, small_settings

async def run(audio_input):
    mc = parse_media_config({
        "source": "capture", "capture_video_format": "lavfi",
        "video_devices": {"main": "testsrc2=size=320x180:rate=15,realtime"},
        "audio_devices": {"builtin_mic": "mic_a", "external_mic": "mic_b", "line_in": "mic_b"},
    }, Path(sys.argv[1]))
    cfg = stream_config(small_settings(main_audio="pcmu", audio_input=audio_input), "main", mc)
    hub = StreamHub("main")
    p = StreamPipeline(hub, cfg, BackoffConfig())
    p.start()
    sub = hub.subscribe()
    frames = []
    async with asyncio.timeout(20):
        async for f in sub:
            frames.append(f)
            if sum(1 for x in frames if x.kind == "video") >= 10 and sum(1 for x in frames if x.kind == "audio") >= 50:
                break
    await asyncio.to_thread(p.stop)
    audio = [f for f in frames if f.kind == "audio"]
    video = [f for f in frames if f.kind == "video"]
    return {"device": cfg.audio.device, "first_video_key": video[0].keyframe,
            "freq": dominant_frequency(decode_audio(audio[:50], "pcmu", 8000), 8000),
            "error": p.status()["last_error"]}

async def main():
    print(json.dumps([await run("builtin_mic"), await run("line_in")]))

asyncio.run(main())
"""


def test_capture_source_alsa_input_selection(tmp_path: Path) -> None:
    """The capture source with a real alsa-lib: each input maps to its configured ALSA device
    (here alsa-lib 'file' PCMs replaying a 700 Hz and a 1300 Hz recording); video from lavfi
    because this PyAV build has no V4L2 demuxer."""
    import array
    import math
    import os
    import subprocess
    import sys

    for name, freq in (("a", 700), ("b", 1300)):
        pcm = array.array("h", (int(8000 * math.sin(2 * math.pi * freq * i / 8000)) for i in range(8000 * 20)))
        (tmp_path / f"mic_{name}.raw").write_bytes(pcm.tobytes())
    conf = tmp_path / "asound.conf"
    conf.write_text("".join(
        f'pcm.mic_{n} {{ type file slave {{ pcm "nullpcm" }} file "/dev/null" infile "{tmp_path}/mic_{n}.raw" '
        'format "raw" }\n' for n in ("a", "b")) + "pcm.nullpcm { type null }\n")
    env = dict(os.environ, ALSA_CONFIG_PATH=str(conf))
    out = subprocess.run([sys.executable, "-c", CAPTURE_SCRIPT, str(tmp_path)], check=True, env=env, timeout=90,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    builtin, line_in = json.loads(out.stdout.strip().splitlines()[-1])
    assert builtin["device"] == "mic_a" and line_in["device"] == "mic_b"
    assert builtin["first_video_key"] and line_in["first_video_key"]
    assert abs(builtin["freq"] - 700) < 15 and abs(line_in["freq"] - 1300) < 26
