"""One stream's pipeline: a supervisor thread running source -> encoders -> StreamHub.

PyAV work stays in this thread (and the capture source's reader threads), never on the event
loop - including ``import av`` itself: the encoders and sources are imported by the pipeline
thread, so building a pipeline costs no PyAV import (seconds on the board's emulated CPU, which
would otherwise sit before the HTTPS listener). A failure is recorded in ``status()`` and the
source restarts with exponential backoff; it never propagates to the service. ``reconfigure``
swaps the StreamConfig and restarts only this pipeline - the other stream's pipeline is a
separate object and keeps running.
"""

from __future__ import annotations

import collections
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from agent.media.annexb import is_annexb, parameter_sets
from agent.media.backoff import Backoff
from agent.media.errors import MediaError, SourceError
from agent.media.frames import (
    VIDEO_CLOCK_RATE,
    AudioDescription,
    EncodedFrame,
    StreamHub,
    VideoDescription,
    aac_description,
)
from agent.media.mediaconfig import BackoffConfig, StreamConfig

if TYPE_CHECKING:
    import av

    from agent.media.encode import AudioEncoder, VideoEncoder
    from agent.media.sources import Source

log = logging.getLogger(__name__)

_URL_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact(message: str) -> str:
    """Error text shown in status (viewer role) must not carry an upstream URL's credentials."""
    return _URL_CREDENTIALS.sub(r"\1***@", message)[:300]


SourceFactory = Callable[[StreamConfig], "Source"]
# (event, outcome, details) - called from the pipeline thread; the capability audits it.
EventHook = Callable[[str, str, dict[str, Any]], None]


class _Sink:
    """FrameSink of one source run: encodes raw frames, forwards remuxed packets, publishes.

    Raw video goes through a small queue to an encoder thread, so capture/generation and
    encoding overlap (at 1080p30 neither alone may take 33 ms of one core) and a slow encoder
    drops pictures at the source - as a camera does - instead of slowing the capture clock.
    """

    def __init__(self, pipeline: StreamPipeline, cfg: StreamConfig, run_stop: threading.Event) -> None:
        self._p = pipeline
        self._cfg = cfg
        self._run_stop = run_stop
        self._venc: VideoEncoder | None = None
        self._aenc: AudioEncoder | None = None
        self._lock = threading.Lock()
        self._ps_prefix = b""
        self._raw: queue.Queue[tuple[av.VideoFrame, int, float]] = queue.Queue(maxsize=cfg.raw_queue_frames)
        self._closing = threading.Event()
        self.error: BaseException | None = None
        self._worker: threading.Thread | None = None
        if cfg.audio is not None:
            # Eagerly, so the description (AAC config) is complete before the first keyframe
            # makes the stream "ready" for DESCRIBE.
            self._audio_encoder()

    def _encode_loop(self) -> None:
        from agent.media.encode import VideoEncoder

        try:
            enc = VideoEncoder(self._cfg.stream, self._cfg.video)
            with self._lock:
                self._venc = enc
            while True:
                try:
                    frame, pts90, wallclock = self._raw.get(timeout=0.1)
                except queue.Empty:
                    if self._closing.is_set():
                        return
                    continue
                for ef in enc.encode(frame, pts90, wallclock):
                    self._p._publish(ef)
        except Exception as exc:
            self.error = exc
            self._run_stop.set()  # end this run; the supervisor restarts it with backoff

    def _audio_encoder(self) -> AudioEncoder:
        from agent.media.encode import AudioEncoder

        with self._lock:
            if self._aenc is None:
                assert self._cfg.audio is not None
                self._aenc = AudioEncoder(self._cfg.stream, self._cfg.audio)
                self._p.hub.set_audio(self._aenc.description())
            return self._aenc

    def video_frame(self, frame: av.VideoFrame, pts90: int, wallclock: float) -> None:
        if self.error is not None:
            raise self.error
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._encode_loop, name=f"media-{self._cfg.stream}-enc", daemon=True
                )
                self._worker.start()
        try:
            self._raw.put_nowait((frame, pts90, wallclock))
        except queue.Full:
            self._p.dropped_raw += 1

    def audio_frame(self, frame: av.AudioFrame, wallclock: float) -> None:
        if self._cfg.audio is None:
            return
        for ef in self._audio_encoder().encode(frame, wallclock):
            self._p._publish(ef)

    def video_packet(self, codec: str, data: bytes, keyframe: bool, pts90: int, wallclock: float) -> None:
        if keyframe:
            ps = parameter_sets(codec, data)
            if ps.sps and ps.pps:
                self._ps_prefix = b"".join(b"\x00\x00\x00\x01" + x for x in (ps.vps, ps.sps, ps.pps) if x)
            elif self._ps_prefix:
                data = self._ps_prefix + data  # upstream sent parameter sets only once / in SDP
        self._p._publish(
            EncodedFrame(
                stream=self._cfg.stream,
                kind="video",
                codec=codec,
                data=data,
                pts=pts90,
                clock_rate=VIDEO_CLOCK_RATE,
                keyframe=keyframe,
                wallclock=wallclock,
            )
        )

    def audio_packet(self, codec: str, data: bytes, pts: int, sample_rate: int, wallclock: float) -> None:
        self._p._publish(
            EncodedFrame(
                stream=self._cfg.stream,
                kind="audio",
                codec=codec,
                data=data,
                pts=pts,
                clock_rate=sample_rate,
                keyframe=True,
                wallclock=wallclock,
            )
        )

    def passthrough_info(
        self, width: int, height: int, fps: float, audio_config: bytes | None, video_extradata: bytes
    ) -> None:
        """A remuxing source tells the real size/rate; the description follows the upstream.

        ``video_extradata`` in Annex B form (RTSP: the SDP's sprop sets) seeds the parameter sets
        put in front of keyframes that arrive without them in band.
        """
        a = self._cfg.audio
        audio = None
        if a is not None and audio_config is not None:
            audio = AudioDescription(codec=a.codec, sample_rate=a.sample_rate, channels=1, config=audio_config)
        elif a is not None and a.codec != "aac":
            audio = AudioDescription(codec=a.codec, sample_rate=a.sample_rate, channels=1)
        video = VideoDescription(codec=self._cfg.video.codec, width=width, height=height, fps=fps)
        current = self._p.hub.describe()
        known = current.video
        if known is None or replace(known, vps=b"", sps=b"", pps=b"") != video or current.audio != audio:
            # a new generation makes every RTSP client DESCRIBE again; a file's next loop pass or
            # an upstream that says what the pipeline already announced must not cut them off
            self._p.hub.configure(video, audio)
        self._ps_prefix = b""
        if video_extradata and is_annexb(video_extradata):
            ps = parameter_sets(self._cfg.video.codec, video_extradata)
            self._ps_prefix = b"".join(b"\x00\x00\x00\x01" + x for x in (ps.vps, ps.sps, ps.pps) if x)

    def audio_passthrough(self, audio_config: bytes | None) -> None:
        """Audio is remuxed while video is re-encoded: describe the upstream's audio."""
        a = self._cfg.audio
        if a is None:
            return
        if a.codec == "aac":
            if audio_config is None:
                raise SourceError("upstream AAC without AudioSpecificConfig", code="media.bitstream_invalid")
            self._p.hub.set_audio(aac_description(a.sample_rate, 1, audio_config))

    def close(self) -> None:
        self._closing.set()
        if self._worker is not None:
            self._worker.join(10)
        for enc in (self._venc, self._aenc):
            if enc is not None:
                enc.close()


def _relay(outer: threading.Event, inner: threading.Event) -> None:
    """Propagate the pipeline's stop into one run's stop event (and end with the run)."""
    while not inner.is_set():
        if outer.wait(0.2):
            inner.set()


class StreamPipeline:
    def __init__(
        self,
        hub: StreamHub,
        cfg: StreamConfig,
        backoff: BackoffConfig,
        source_factory: SourceFactory | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self.hub = hub
        self._on_event = on_event
        self._cfg = cfg
        self._backoff_cfg = backoff
        self._factory: SourceFactory | None = source_factory
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._run_stop: threading.Event | None = None
        self.state = "stopped"
        self.restarts = 0
        self.last_error: str | None = None
        self.last_error_code: str | None = None
        self.last_error_at: float | None = None
        self.next_retry_s: float | None = None
        self._video_times: collections.deque[float] = collections.deque(maxlen=121)
        self._stats_lock = threading.Lock()
        self.video_frames = 0
        self.audio_frames = 0
        self.dropped_raw = 0  # raw pictures dropped because the encoder fell behind

    @property
    def config(self) -> StreamConfig:
        return self._cfg

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._cfg, self._stop), name=f"media-{self.hub.stream}", daemon=True
            )
            self.state = "starting"
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Blocking: call via asyncio.to_thread from the loop."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            if self._run_stop is not None:
                self._run_stop.set()  # immediate; the relay would take up to 0.2 s
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("media pipeline %s did not stop within %.1fs", self.hub.stream, timeout)
        self.state = "stopped"

    def reconfigure(self, cfg: StreamConfig) -> bool:
        """Apply a new config; restarts this pipeline only if it changed. Blocking (joins)."""
        if cfg == self._cfg:
            return False
        was_running = self._thread is not None
        self.stop()
        self._cfg = cfg
        self.restarts = 0
        self.last_error = self.last_error_code = None
        if was_running:
            self.start()
        return True

    def _publish(self, frame: EncodedFrame) -> None:
        if frame.kind == "video":
            self.video_frames += 1
            with self._stats_lock:
                self._video_times.append(time.monotonic())
        else:
            self.audio_frames += 1
        self.hub.publish(frame)

    def fps(self) -> float:
        with self._stats_lock:
            times = list(self._video_times)
        if len(times) < 2 or time.monotonic() - times[-1] > 2.0:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def _describe(self, cfg: StreamConfig) -> None:
        v = cfg.video
        audio = None
        if cfg.audio is not None and cfg.audio.codec != "aac":
            audio = AudioDescription(codec=cfg.audio.codec, sample_rate=cfg.audio.sample_rate, channels=1)
        # AAC's config is known once the encoder is open; _Sink.set_audio fills it in.
        self.hub.configure(VideoDescription(codec=v.codec, width=v.width, height=v.height, fps=v.fps), audio)

    def _source(self, cfg: StreamConfig) -> Source:
        if self._factory is not None:
            return self._factory(cfg)
        from agent.media.sources import make_source

        return make_source(cfg)

    def _run(self, cfg: StreamConfig, stop: threading.Event) -> None:
        backoff = Backoff(self._backoff_cfg.initial_s, self._backoff_cfg.max_s, self._backoff_cfg.healthy_s)
        while not stop.is_set():
            self._describe(cfg)
            self.state = "running"
            self.next_retry_s = None
            backoff.started(time.monotonic())
            run_stop = threading.Event()  # set by stop() or by a failing encoder thread
            self._run_stop = run_stop
            if stop.is_set():
                break
            relay = threading.Thread(target=_relay, args=(stop, run_stop), daemon=True)
            relay.start()
            sink: _Sink | None = None
            try:
                sink = _Sink(self, cfg, run_stop)
                self._source(cfg).run(sink, run_stop)
                if sink.error is not None:
                    raise sink.error
            except Exception as exc:  # a source failure must never kill the service
                code = exc.code if isinstance(exc, MediaError) else f"media.{type(exc).__name__}"
                self.last_error = redact(str(exc))
                self.last_error_code = code
                self.last_error_at = time.time()
                log.warning("media stream %s failed (%s): %s", cfg.stream, code, self.last_error)
            finally:
                if sink is not None:
                    sink.close()
                run_stop.set()  # ends the relay
            if stop.is_set():
                break
            delay = backoff.failed(time.monotonic())
            self.restarts += 1
            if backoff.failures == 1 and self._on_event is not None:
                # first failure of an incident only: a crash loop must not flood the audit log
                self._on_event(
                    "media.source_failed",
                    "failure",
                    {"stream": cfg.stream, "source": cfg.source, "code": self.last_error_code},
                )
            self.state = "backoff"
            self.next_retry_s = delay
            if stop.wait(delay):
                break
        self.state = "stopped"

    def status(self) -> dict[str, Any]:
        cfg = self._cfg
        return {
            "state": self.state,
            "source": cfg.source,
            "video": {
                "codec": cfg.video.codec,
                "encoder": cfg.video.encoder,
                "width": cfg.video.width,
                "height": cfg.video.height,
                "fps": cfg.video.fps,
                "bitrate_kbps": cfg.video.bitrate_kbps,
            },
            "audio": None if cfg.audio is None else {"codec": cfg.audio.codec, "input": cfg.audio.input},
            "fps_measured": round(self.fps(), 2),
            "video_frames": self.video_frames,
            "audio_frames": self.audio_frames,
            "dropped_raw": self.dropped_raw,
            "restarts": self.restarts,
            "next_retry_s": self.next_retry_s,
            "last_error": self.last_error,
            "last_error_code": self.last_error_code,
            "subscribers": self.hub.subscriber_count(),
            "generation": self.hub.describe().generation,
        }
