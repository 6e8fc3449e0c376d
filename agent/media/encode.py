"""PyAV encoders that turn raw frames into EncodedFrames. Called from pipeline threads only.

The video encoder is chosen by FFmpeg codec name (``VideoConfig.encoder``) so a SoC's hardware
encoder (h264_v4l2m2m, ...) can be named in config; the x264/x265 tuning below is applied only to
the software encoders. The audio chain is an FFmpeg filter graph: volume (gain), optional noise
filter (afftdn), then aformat to what the encoder takes, then a FIFO cutting exact packet sizes.
"""

from __future__ import annotations

import fractions
import itertools
from typing import Any

import av
import av.filter

from agent.media.errors import SourceError
from agent.media.frames import VIDEO_CLOCK_RATE, AudioDescription, EncodedFrame, aac_description
from agent.media.mediaconfig import AudioConfig, VideoConfig

G711_PACKET_SAMPLES = 160  # 20 ms at 8 kHz, the RFC 3551 default packetization
_AUDIO_ENCODERS = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw", "aac": "aac"}


def _open_codec(name: str) -> Any:
    try:
        return av.CodecContext.create(name, "w")
    except (av.error.FFmpegError, ValueError) as exc:
        raise SourceError(f"encoder {name} unavailable: {exc}", code="media.encoder_unavailable") from exc


class VideoEncoder:
    def __init__(self, stream: str, cfg: VideoConfig) -> None:
        self.stream = stream
        self.cfg = cfg
        ctx = _open_codec(cfg.encoder)
        ctx.width = cfg.width
        ctx.height = cfg.height
        formats = [f.name for f in (ctx.codec.video_formats or [])]
        ctx.pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
        ctx.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        ctx.framerate = fractions.Fraction(cfg.fps, 1)
        ctx.bit_rate = cfg.bitrate_kbps * 1000
        ctx.gop_size = cfg.gop
        ctx.max_b_frames = 0  # RTP timestamps = decode order; B-frames add latency too
        if cfg.encoder == "libx264":
            ctx.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                # a VBV keeps the rate close to the setting for a live link
                "x264-params": f"keyint={cfg.gop}:min-keyint={cfg.gop}:scenecut=0:bframes=0:"
                f"vbv-maxrate={cfg.bitrate_kbps}:vbv-bufsize={cfg.bitrate_kbps}:repeat-headers=1"
                + (f":threads={cfg.threads}" if cfg.threads > 0 else ""),
            }
        elif cfg.encoder == "libx265":
            ctx.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "x265-params": f"log-level=error:keyint={cfg.gop}:min-keyint={cfg.gop}:scenecut=0:"
                f"bframes=0:repeat-headers=1:vbv-maxrate={cfg.bitrate_kbps}:vbv-bufsize={cfg.bitrate_kbps}"
                + (f":pools={cfg.threads}:frame-threads={cfg.threads}" if cfg.threads > 0 else ""),
            }
        try:
            ctx.open()
        except av.error.FFmpegError as exc:
            raise SourceError(f"cannot open encoder {cfg.encoder}: {exc}", code="media.encoder_failed") from exc
        self._ctx = ctx
        self._last_pts = -1

    def encode(self, frame: av.VideoFrame, pts90: int, wallclock: float) -> list[EncodedFrame]:
        if frame.width != self.cfg.width or frame.height != self.cfg.height or frame.format.name != self._ctx.pix_fmt:
            frame = frame.reformat(width=self.cfg.width, height=self.cfg.height, format=self._ctx.pix_fmt)
        # lavfi sources mark every frame as I; libx264 would obey and emit only IDR frames.
        frame.pict_type = av.video.frame.PictureType.NONE
        pts90 = max(pts90, self._last_pts + 1)  # encoders reject non-increasing pts
        self._last_pts = pts90
        frame.pts = pts90
        frame.time_base = self._ctx.time_base
        out = []
        for pkt in self._ctx.encode(frame):
            out.append(
                EncodedFrame(
                    stream=self.stream,
                    kind="video",
                    codec=self.cfg.codec,
                    data=bytes(pkt),
                    pts=int(pkt.pts if pkt.pts is not None else pts90),
                    clock_rate=VIDEO_CLOCK_RATE,
                    keyframe=bool(pkt.is_keyframe),
                    wallclock=wallclock,
                )
            )
        return out

    def close(self) -> None:
        try:
            self._ctx.close()
        except (AttributeError, av.error.FFmpegError):
            pass


class AudioEncoder:
    """gain -> noise filter -> resample/format -> fixed-size packets -> G.711 or AAC."""

    def __init__(self, stream: str, cfg: AudioConfig) -> None:
        self.stream = stream
        self.cfg = cfg
        ctx = _open_codec(_AUDIO_ENCODERS[cfg.codec])
        ctx.sample_rate = cfg.sample_rate
        ctx.layout = "mono"
        ctx.format = "fltp" if cfg.codec == "aac" else "s16"
        ctx.time_base = fractions.Fraction(1, cfg.sample_rate)
        if cfg.codec == "aac":
            ctx.bit_rate = cfg.bitrate_kbps * 1000
        try:
            ctx.open()
        except av.error.FFmpegError as exc:
            raise SourceError(f"cannot open audio encoder: {exc}", code="media.encoder_failed") from exc
        self._ctx = ctx
        self.packet_samples = ctx.frame_size if cfg.codec == "aac" else G711_PACKET_SAMPLES
        self._graph: av.filter.Graph | None = None
        self._graph_key: tuple[str, int, str] | None = None
        self._fifo = av.AudioFifo()
        self._in_samples = 0  # samples fed to the encoder (its pts)
        self._out_packets = 0
        self._t0: float | None = None

    def description(self) -> AudioDescription:
        if self.cfg.codec == "aac":
            return aac_description(self.cfg.sample_rate, 1, bytes(self._ctx.extradata or b""))
        return AudioDescription(codec=self.cfg.codec, sample_rate=self.cfg.sample_rate, channels=1)

    def _build_graph(self, frame: av.AudioFrame) -> av.filter.Graph:
        g = av.filter.Graph()
        src = g.add_abuffer(
            format=frame.format.name,
            sample_rate=frame.sample_rate,
            layout=frame.layout.name,
            time_base=fractions.Fraction(1, frame.sample_rate),
        )
        chain = [src]
        if self.cfg.gain_db != 0.0:
            chain.append(g.add("volume", f"volume={self.cfg.gain_db:.2f}dB"))
        if self.cfg.noise_filter:
            chain.append(g.add("afftdn"))
        chain.append(
            g.add(
                "aformat",
                f"sample_fmts={self._ctx.format.name}:sample_rates={self.cfg.sample_rate}:channel_layouts=mono",
            )
        )
        chain.append(g.add("abuffersink"))
        for a, b in itertools.pairwise(chain):
            a.link_to(b)
        g.configure()
        return g

    def encode(self, frame: av.AudioFrame, wallclock: float) -> list[EncodedFrame]:
        key = (frame.format.name, frame.sample_rate, frame.layout.name)
        if self._graph is None or key != self._graph_key:
            self._graph = self._build_graph(frame)
            self._graph_key = key
        if self._t0 is None:
            self._t0 = wallclock
        frame.pts = None
        self._graph.push(frame)
        while True:
            try:
                filtered = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            if isinstance(filtered, av.AudioFrame):
                filtered.pts = None
                self._fifo.write(filtered)
        out: list[EncodedFrame] = []
        while (chunk := self._fifo.read(self.packet_samples)) is not None:
            chunk.pts = self._in_samples
            chunk.time_base = self._ctx.time_base
            self._in_samples += chunk.samples
            for pkt in self._ctx.encode(chunk):
                pts = self._out_packets * self.packet_samples
                self._out_packets += 1
                out.append(
                    EncodedFrame(
                        stream=self.stream,
                        kind="audio",
                        codec=self.cfg.codec,
                        data=bytes(pkt),
                        pts=pts,
                        clock_rate=self.cfg.sample_rate,
                        keyframe=True,
                        wallclock=self._t0 + pts / self.cfg.sample_rate,
                    )
                )
        return out

    def close(self) -> None:
        try:
            self._ctx.close()
        except (AttributeError, av.error.FFmpegError):
            pass


def tone_frequency(device: str) -> int:
    """The synthetic source's tone for an input (its 'device' is a frequency in Hz)."""
    try:
        freq = int(device)
    except ValueError:
        return 1000
    return freq if 20 <= freq <= 20000 else 1000
