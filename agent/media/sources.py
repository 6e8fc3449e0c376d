"""Camera sources behind one interface: ``run(sink, stop)`` in a pipeline thread.

- ``SyntheticSource``: the embedded default - lavfi testsrc2 (moving pattern) with a burned-in
  counter code and UTC clock, plus a sine tone; paced to real time.
- ``CaptureSource``: V4L2 video + ALSA audio (device paths from config "media"), for hardware.
- ``DemuxSource``: an upstream RTSP stream (an OEM encoder daemon) or a file played in a loop;
  packets are remuxed without re-encoding when the codec already matches the settings, else
  decoded and handed to the encoders.

A source raises ``SourceError`` (or lets a PyAV error escape) on failure; the pipeline restarts it
with backoff. ``stop`` is polled between frames; blocking reads are bounded by FFmpeg timeouts.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import av

from agent.media.annexb import avcc_to_annexb, is_annexb
from agent.media.encode import tone_frequency
from agent.media.errors import SourceError
from agent.media.mediaconfig import StreamConfig
from agent.media.overlay import burn_in

MAX_CATCH_UP_S = 0.5  # a paced source catches up this much lag by running faster; beyond, it pauses
_DECODER_TO_CODEC = {"h264": "h264", "hevc": "h265", "pcm_mulaw": "pcmu", "pcm_alaw": "pcma", "aac": "aac"}


class FrameSink(Protocol):
    def video_frame(self, frame: av.VideoFrame, pts90: int, wallclock: float) -> None: ...

    def audio_frame(self, frame: av.AudioFrame, wallclock: float) -> None: ...

    def video_packet(self, codec: str, data: bytes, keyframe: bool, pts90: int, wallclock: float) -> None: ...

    def audio_packet(self, codec: str, data: bytes, pts: int, sample_rate: int, wallclock: float) -> None: ...

    def passthrough_info(
        self, width: int, height: int, fps: float, audio_config: bytes | None, video_extradata: bytes
    ) -> None: ...

    def audio_passthrough(self, audio_config: bytes | None) -> None: ...


class Source(Protocol):
    def run(self, sink: FrameSink, stop: threading.Event) -> None: ...


def _open(url: str, **kwargs: Any) -> Any:
    try:
        return av.open(url, **kwargs)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise SourceError(f"cannot open {kwargs.get('format') or 'input'}: {exc}", code="media.source_open") from exc


class SyntheticSource:
    """Moving test pattern + counter/clock + tone. Frame n carries counter n (readable back)."""

    def __init__(self, cfg: StreamConfig, wallclock: Any = time.time) -> None:
        self.cfg = cfg
        self._wallclock = wallclock
        self.counter = 0
        self.stalls = 0

    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        v = self.cfg.video
        video = _open(f"testsrc2=size={v.width}x{v.height}:rate={v.fps}", format="lavfi")
        audio = None
        audio_rate = 0
        chunk = 0
        if self.cfg.audio is not None:
            audio_rate = self.cfg.audio.sample_rate
            chunk = audio_rate // 50  # 20 ms
            freq = tone_frequency(self.cfg.audio.device)
            audio = _open(f"sine=frequency={freq}:sample_rate={audio_rate}:samples_per_frame={chunk}", format="lavfi")
        try:
            vframes = video.decode(video=0)
            aframes = audio.decode(audio=0) if audio is not None else None
            start = time.monotonic()
            n_video = 0
            n_audio = 0
            while not stop.is_set():
                t_video = n_video / v.fps
                t_audio = n_audio * chunk / audio_rate if aframes is not None else float("inf")
                due = min(t_video, t_audio)
                delay = start + due - time.monotonic()
                if delay < -MAX_CATCH_UP_S:
                    # Starved of CPU for a while: treat it as a pause rather than emitting a burst
                    # of frames faster than the configured rate (a live camera never bursts).
                    start -= delay
                    self.stalls += 1
                elif delay > 0 and stop.wait(delay):
                    break
                now = self._wallclock()
                if t_video <= t_audio:
                    frame = next(vframes)
                    plane = frame.planes[0]
                    burn_in(memoryview(plane), plane.line_size, frame.width, frame.height, self.counter, now)
                    sink.video_frame(frame, round(t_video * 90000), now)
                    self.counter += 1
                    n_video += 1
                else:
                    assert aframes is not None
                    sink.audio_frame(next(aframes), now)
                    n_audio += 1
        finally:
            video.close()
            if audio is not None:
                audio.close()


class CaptureSource:
    """V4L2 camera + ALSA microphone. Two reader threads; each feeds its own encoder."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg

    def _video(self, sink: FrameSink, stop: threading.Event, errors: list[BaseException]) -> None:
        v = self.cfg.video
        try:
            fmt = self.cfg.capture_format
            if fmt not in av.formats_available:
                raise SourceError(f"this FFmpeg build has no {fmt} input", code="media.format_unavailable")
            # V4L2 takes the wanted size and rate as demuxer options; other inputs get none
            opts = {"video_size": f"{v.width}x{v.height}", "framerate": str(v.fps)} if fmt == "v4l2" else {}
            c = _open(self.cfg.location, format=fmt, options=opts)
            try:
                t0 = time.monotonic()
                for frame in c.decode(video=0):
                    if stop.is_set():
                        break
                    sink.video_frame(frame, round((time.monotonic() - t0) * 90000), time.time())
            finally:
                c.close()
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    def _audio(self, sink: FrameSink, stop: threading.Event, errors: list[BaseException]) -> None:
        a = self.cfg.audio
        assert a is not None
        try:
            if "alsa" not in av.formats_available:
                raise SourceError("this FFmpeg build has no ALSA input", code="media.format_unavailable")
            c = _open(a.device, format="alsa", options={"sample_rate": str(a.sample_rate), "channels": "1"})
            try:
                for frame in c.decode(audio=0):
                    if stop.is_set():
                        break
                    sink.audio_frame(frame, time.time())
            finally:
                c.close()
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        errors: list[BaseException] = []
        inner = threading.Event()

        def relay() -> None:
            stop.wait()
            inner.set()

        threading.Thread(target=relay, daemon=True).start()
        threads = [threading.Thread(target=self._video, args=(sink, inner, errors), daemon=True)]
        if self.cfg.audio is not None:
            threads.append(threading.Thread(target=self._audio, args=(sink, inner, errors), daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors and not stop.is_set():
            raise errors[0]


class DemuxSource:
    """Upstream RTSP (live) or a file played in a loop (paced to real time)."""

    def __init__(self, cfg: StreamConfig, *, loop: bool, timeout_s: float = 5.0) -> None:
        self.cfg = cfg
        self.loop = loop
        self.timeout_s = timeout_s
        self.remuxed_video = False
        self.remuxed_audio = False
        self._start = 0.0

    def _open_input(self) -> Any:
        if self.loop:
            return _open(self.cfg.location)
        usec = str(int(self.timeout_s * 1_000_000))
        return _open(self.cfg.location, options={"rtsp_transport": "tcp", "timeout": usec}, timeout=self.timeout_s)

    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        offset = 0.0  # seconds added to timestamps on each loop pass
        self._start = time.monotonic()
        while not stop.is_set():
            end = self._play_once(sink, stop, offset)
            if not self.loop:
                if not stop.is_set():
                    raise SourceError("upstream stream ended", code="media.upstream_ended")
                return
            if end <= offset:
                raise SourceError("file holds no playable packets", code="media.source_empty")
            offset = end

    def _play_once(self, sink: FrameSink, stop: threading.Event, offset: float) -> float:
        c = self._open_input()
        try:
            vs = c.streams.video[0] if c.streams.video else None
            if vs is None:
                raise SourceError("input has no video stream", code="media.source_no_video")
            aus = c.streams.audio[0] if c.streams.audio and self.cfg.audio is not None else None
            vcodec = _DECODER_TO_CODEC.get(vs.codec_context.name, "")
            self.remuxed_video = vcodec == self.cfg.video.codec
            acodec = _DECODER_TO_CODEC.get(aus.codec_context.name, "") if aus is not None else ""
            a = self.cfg.audio
            self.remuxed_audio = (
                aus is not None
                and a is not None
                and acodec == a.codec
                and aus.codec_context.sample_rate == a.sample_rate
                and aus.codec_context.channels == 1
            )
            bsf = None
            if self.remuxed_audio and not self.remuxed_video and aus is not None:
                sink.audio_passthrough(bytes(aus.codec_context.extradata or b"") or None)
            if self.remuxed_video:
                fps = float(vs.average_rate or vs.guessed_rate or self.cfg.video.fps)
                asc = bytes(aus.codec_context.extradata or b"") if self.remuxed_audio and aus is not None else None
                extradata = bytes(vs.codec_context.extradata or b"")
                sink.passthrough_info(vs.codec_context.width, vs.codec_context.height, fps, asc, extradata)
                if extradata and not is_annexb(extradata):
                    name = "h264_mp4toannexb" if vcodec == "h264" else "hevc_mp4toannexb"
                    bsf = av.bitstream.BitStreamFilterContext(name, vs)
            streams = [s for s in (vs, aus) if s is not None]
            last = offset
            for pkt in c.demux(streams):
                if stop.is_set():
                    break
                if pkt.size == 0 or pkt.pts is None or pkt.time_base is None:
                    continue
                t = offset + float(pkt.pts * pkt.time_base)
                last = max(last, t + float((pkt.duration or 0) * pkt.time_base))
                if self.loop:
                    delay = self._start + t - time.monotonic()
                    if delay < -MAX_CATCH_UP_S:
                        self._start -= delay
                    elif delay > 0 and stop.wait(delay):
                        break
                now = time.time()
                if pkt.stream is vs:
                    self._video(sink, pkt, bsf, vcodec, t, now)
                elif self.remuxed_audio:
                    assert a is not None
                    sink.audio_packet(a.codec, bytes(pkt), round(t * a.sample_rate), a.sample_rate, now)
                else:
                    for frame in pkt.decode():
                        sink.audio_frame(frame, now)
            return last
        finally:
            c.close()

    def _video(self, sink: FrameSink, pkt: Any, bsf: Any, vcodec: str, t: float, now: float) -> None:
        pts90 = round(t * 90000)
        if not self.remuxed_video:
            for frame in pkt.decode():
                sink.video_frame(frame, pts90, now)
            return
        packets = bsf.filter(pkt) if bsf is not None else [pkt]
        for p in packets:
            data = bytes(p)
            if not is_annexb(data):
                data = avcc_to_annexb(data)
            sink.video_packet(vcodec, data, bool(p.is_keyframe), pts90, now)


def make_source(cfg: StreamConfig, *, upstream_timeout_s: float = 5.0) -> Source:
    if cfg.source == "synthetic":
        return SyntheticSource(cfg)
    if cfg.source == "capture":
        return CaptureSource(cfg)
    if cfg.source == "rtsp":
        return DemuxSource(cfg, loop=False, timeout_s=upstream_timeout_s)
    if cfg.source == "file":
        return DemuxSource(cfg, loop=True)
    raise SourceError(f"unknown source {cfg.source}", code="media.config_invalid")
