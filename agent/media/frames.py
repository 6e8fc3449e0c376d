"""The interface between media pipelines (PyAV threads) and the RTSP server (event loop).

``StreamHub`` is the only meeting point: encoder threads ``publish`` encoded frames, RTSP sessions
``subscribe`` and iterate. Rules the design keeps:

- publish never blocks the encoder thread: every subscriber has a bounded deque; when it is full
  the frame is dropped for that subscriber, which is marked lagging and skips video until the next
  keyframe (a decoder cannot use P-frames whose references were dropped). The RTSP side decides
  what to do with a lagging client (``sub.lagging``, ``sub.dropped``).
- the hub keeps the current GOP (keyframe onward, with the audio in between, bounded), so a new
  subscriber starts with a keyframe at once instead of waiting up to a GOP.
- ``describe()`` carries everything SDP needs: H.264 SPS/PPS and profile-level-id, H.265
  VPS/SPS/PPS, AAC AudioSpecificConfig, rates, channels, size and frame rate. Its ``generation``
  changes whenever the pipeline restarts with other parameters, so a session can notice.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from agent.media.annexb import (
    h264_profile_level_id,
    h265_profile_tier_level,
    parameter_sets,
    parse_aac_config,
)
from agent.media.errors import BitstreamError, HubClosed
from agent.media.limits import AUDIO_CODECS, VIDEO_CLOCK_RATE, VIDEO_CODECS, HubLimits


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    stream: str  # "main" | "sub"
    kind: str  # "video" | "audio"
    codec: str  # "h264" | "h265" | "pcmu" | "pcma" | "aac"
    data: bytes  # video: Annex B access unit; aac: raw AAC frame; g711: samples
    pts: int  # in clock_rate units (video 90000, audio sample rate)
    clock_rate: int
    keyframe: bool
    wallclock: float  # capture time (time.time()) for RTCP SR NTP mapping


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class VideoDescription:
    codec: str  # "h264" | "h265"
    width: int
    height: int
    fps: float
    clock_rate: int = VIDEO_CLOCK_RATE
    vps: bytes = b""  # H.265 only; NAL units without start codes
    sps: bytes = b""
    pps: bytes = b""

    @property
    def ready(self) -> bool:
        """True once the parameter sets SDP needs are known (after the first keyframe)."""
        if self.codec == "h265":
            return bool(self.vps and self.sps and self.pps)
        return bool(self.sps and self.pps)

    @property
    def encoding_name(self) -> str:
        return "H264" if self.codec == "h264" else "H265"

    @property
    def profile_level_id(self) -> str:
        """RFC 6184 profile-level-id (H.264 only), from the SPS."""
        return h264_profile_level_id(self.sps)

    def sprop_parameter_sets(self) -> str:
        """RFC 6184 sprop-parameter-sets: base64 SPS,PPS."""
        return f"{_b64(self.sps)},{_b64(self.pps)}"

    def fmtp(self) -> str:
        """The a=fmtp parameters (without 'a=fmtp:<pt> ')."""
        if not self.ready:
            raise BitstreamError("parameter sets not known yet", code="media.not_ready")
        if self.codec == "h264":
            return (
                f"packetization-mode=1;profile-level-id={self.profile_level_id};"
                f"sprop-parameter-sets={self.sprop_parameter_sets()}"
            )
        ptl = h265_profile_tier_level(self.sps)
        return (
            f"profile-id={ptl.profile_id};tier-flag={ptl.tier_flag};level-id={ptl.level_id};"
            f"sprop-vps={_b64(self.vps)};sprop-sps={_b64(self.sps)};sprop-pps={_b64(self.pps)}"
        )


@dataclass(frozen=True, slots=True)
class AudioDescription:
    codec: str  # "pcmu" | "pcma" | "aac"
    sample_rate: int
    channels: int
    config: bytes = b""  # AAC AudioSpecificConfig; empty for G.711

    @property
    def clock_rate(self) -> int:
        return self.sample_rate

    @property
    def static_payload_type(self) -> int | None:
        """RFC 3551 static PT for G.711 at 8 kHz mono, else None (use a dynamic PT)."""
        if self.sample_rate == 8000 and self.channels == 1:
            return {"pcmu": 0, "pcma": 8}.get(self.codec)
        return None

    @property
    def encoding_name(self) -> str:
        return {"pcmu": "PCMU", "pcma": "PCMA", "aac": "mpeg4-generic"}[self.codec]

    @property
    def config_hex(self) -> str:
        return self.config.hex()

    def rtpmap(self) -> str:
        """The a=rtpmap value after the payload type, e.g. 'PCMU/8000' or 'mpeg4-generic/16000/1'."""
        base = f"{self.encoding_name}/{self.sample_rate}"
        return base if self.channels == 1 and self.codec != "aac" else f"{base}/{self.channels}"

    def fmtp(self) -> str | None:
        """RFC 3640 AAC-hbr parameters; None for G.711."""
        if self.codec != "aac":
            return None
        return (
            "streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
            f"indexdeltalength=3;config={self.config_hex}"
        )


@dataclass(frozen=True, slots=True)
class StreamDescription:
    stream: str
    video: VideoDescription | None
    audio: AudioDescription | None
    generation: int = 0  # bumps whenever the pipeline is (re)configured

    @property
    def ready(self) -> bool:
        """Video parameter sets known and, for AAC, the AudioSpecificConfig: SDP can be written."""
        if self.video is None or not self.video.ready:
            return False
        return self.audio is None or self.audio.codec != "aac" or bool(self.audio.config)


class FrameSubscription:
    """One reader of a hub: an async iterator over EncodedFrame with a bounded queue.

    Created by ``StreamHub.subscribe`` on the event loop; fed by ``_push`` from any thread.
    """

    def __init__(
        self,
        hub: StreamHub,
        loop: asyncio.AbstractEventLoop,
        maxsize: int,
        kinds: frozenset[str],
    ) -> None:
        self._hub = hub
        self._loop = loop
        self._maxsize = maxsize
        self._kinds = kinds
        self._lock = threading.Lock()
        self._queue: deque[EncodedFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._need_keyframe = "video" in kinds
        self._closed = False
        self.dropped = 0  # frames dropped for this subscriber (queue full or skipped to keyframe)
        self.lag_events = 0  # how often the queue overflowed
        self.lagging = False  # True since the last overflow until a keyframe resynchronised it
        self.generation = hub.describe().generation  # description generation at subscribe time

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        with self._lock:
            return len(self._queue)

    def _prefill(self, frames: list[EncodedFrame]) -> None:
        wanted = [f for f in frames if f.kind in self._kinds]
        with self._lock:
            if len(wanted) > self._maxsize:
                return  # cache larger than our queue: wait for the next keyframe instead
            self._queue.extend(wanted)
            if any(f.kind == "video" and f.keyframe for f in wanted):
                self._need_keyframe = False

    def _push(self, frame: EncodedFrame) -> None:
        """Called with the hub lock held, from the publishing thread. Never blocks on the reader."""
        if frame.kind not in self._kinds:
            return
        wake = False
        with self._lock:
            if self._closed:
                return
            if len(self._queue) >= self._maxsize:
                self.dropped += 1
                if not self.lagging:
                    self.lag_events += 1
                self.lagging = True
                if "video" in self._kinds:
                    self._need_keyframe = True
                return
            if frame.kind == "video" and self._need_keyframe:
                if not frame.keyframe:
                    self.dropped += 1
                    return
                # resynchronised: a decoder can start here
                self._need_keyframe = False
                self.lagging = False
            self._queue.append(frame)
            if self._waiter is not None:
                wake = True
        if wake:
            self._wake()

    def _wake(self) -> None:
        def _set() -> None:
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)

        try:
            self._loop.call_soon_threadsafe(_set)
        except RuntimeError:
            pass  # loop closed: nobody is waiting any more

    def _close_from_hub(self) -> None:
        with self._lock:
            self._closed = True
        self._wake()

    def close(self) -> None:
        """Stop receiving frames (idempotent); pending ``get`` calls end with HubClosed."""
        self._hub._unsubscribe(self)
        self._close_from_hub()

    def get_nowait(self) -> EncodedFrame | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    async def get(self) -> EncodedFrame:
        """Next frame; raises HubClosed when the subscription or hub is closed and drained."""
        while True:
            with self._lock:
                if self._queue:
                    return self._queue.popleft()
                if self._closed:
                    raise HubClosed("subscription closed", code="media.hub_closed")
                fut: asyncio.Future[None] = self._loop.create_future()
                self._waiter = fut
            try:
                await fut
            finally:
                with self._lock:
                    if self._waiter is fut:
                        self._waiter = None

    def __aiter__(self) -> FrameSubscription:
        return self

    async def __anext__(self) -> EncodedFrame:
        try:
            return await self.get()
        except HubClosed:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> FrameSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class StreamHub:
    """One per stream name ("main", "sub"). ``publish`` is thread-safe and never blocks."""

    def __init__(self, stream: str, limits: HubLimits | None = None) -> None:
        self.stream = stream
        self.limits = limits or HubLimits()
        self._lock = threading.Lock()
        self._subs: list[FrameSubscription] = []
        self._gop: list[EncodedFrame] = []
        self._gop_bytes = 0
        self._gop_valid = False
        self._desc = StreamDescription(stream=stream, video=None, audio=None, generation=0)
        self._desc_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._closed = False
        self.published = 0
        self._listeners: list[Callable[[StreamDescription], None]] = []

    # --- producer side (pipeline threads) ---

    def configure(self, video: VideoDescription | None, audio: AudioDescription | None) -> int:
        """Start a new generation (pipeline (re)started with these parameters); drops the GOP cache.

        Parameter sets are filled in from the first keyframe published afterwards.
        """
        with self._lock:
            gen = self._desc.generation + 1
            self._desc = StreamDescription(stream=self.stream, video=video, audio=audio, generation=gen)
            self._gop = []
            self._gop_bytes = 0
            self._gop_valid = False
        self._notify_description()
        return gen

    def set_audio(self, audio: AudioDescription | None) -> None:
        """Fill in audio details known only after the encoder opened (e.g. the AAC config)."""
        with self._lock:
            self._desc = replace(self._desc, audio=audio)
        self._notify_description()

    def publish(self, frame: EncodedFrame) -> None:
        if frame.stream != self.stream:
            raise ValueError(f"frame of stream {frame.stream!r} published to hub {self.stream!r}")
        changed = False
        with self._lock:
            if self._closed:
                return
            if frame.kind == "video" and frame.keyframe:
                changed = self._learn_parameter_sets(frame)
            self._cache(frame)
            self.published += 1
            for sub in self._subs:
                sub._push(frame)
        if changed:
            self._notify_description()

    def _learn_parameter_sets(self, frame: EncodedFrame) -> bool:
        video = self._desc.video
        if video is None:
            return False
        ps = parameter_sets(frame.codec, frame.data)
        new = replace(video, vps=ps.vps or video.vps, sps=ps.sps or video.sps, pps=ps.pps or video.pps)
        if new == video:
            return False
        self._desc = replace(self._desc, video=new)
        return True

    def _cache(self, frame: EncodedFrame) -> None:
        if frame.kind == "video" and frame.keyframe:
            self._gop = [frame]
            self._gop_bytes = len(frame.data)
            self._gop_valid = True
            return
        if not self._gop_valid:
            return
        if (
            len(self._gop) >= self.limits.gop_cache_frames
            or self._gop_bytes + len(frame.data) > self.limits.gop_cache_bytes
        ):
            # The GOP outgrew the cache; a partial GOP is useless, so wait for the next keyframe.
            self._gop = []
            self._gop_bytes = 0
            self._gop_valid = False
            return
        self._gop.append(frame)
        self._gop_bytes += len(frame.data)

    def close(self) -> None:
        """End every subscription (service stop)."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
            self._subs.clear()
        for s in subs:
            s._close_from_hub()
        self._notify_description()

    # --- consumer side (event loop) ---

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(
        self, *, kinds: tuple[str, ...] = ("video", "audio"), maxsize: int | None = None
    ) -> FrameSubscription:
        """Subscribe from a coroutine; the queue starts with the cached GOP (keyframe first)."""
        loop = asyncio.get_running_loop()
        size = maxsize if maxsize is not None else self.limits.queue_frames
        if size < 1:
            raise ValueError("maxsize must be positive")
        sub = FrameSubscription(self, loop, size, frozenset(kinds))
        with self._lock:
            if self._closed:
                raise HubClosed(f"hub {self.stream} is closed", code="media.hub_closed")
            if len(self._subs) >= self.limits.max_subscribers:
                raise HubClosed("too many subscribers", code="media.too_many_subscribers")
            if self._gop_valid:
                sub._prefill(list(self._gop))
            self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: FrameSubscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subs)

    def subscriber_stats(self) -> list[dict[str, object]]:
        with self._lock:
            subs = list(self._subs)
        return [
            {"queued": s.qsize(), "dropped": s.dropped, "lagging": s.lagging, "lag_events": s.lag_events} for s in subs
        ]

    def describe(self) -> StreamDescription:
        with self._lock:
            return self._desc

    def gop_cache_len(self) -> int:
        with self._lock:
            return len(self._gop) if self._gop_valid else 0

    async def wait_ready(self) -> StreamDescription:
        """The description once parameter sets are known (DESCRIBE before the first keyframe).

        Bound it with ``asyncio.timeout``; raises HubClosed if the hub closes meanwhile.
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                desc = self._desc
                if desc.ready:
                    return desc
                if self._closed:
                    raise HubClosed(f"hub {self.stream} is closed", code="media.hub_closed")
                fut: asyncio.Future[None] = loop.create_future()
                self._desc_waiters.append((loop, fut))
            await fut

    def on_description(self, cb: Callable[[StreamDescription], None]) -> None:
        """Call ``cb`` (from the publishing thread) whenever the description changes."""
        self._listeners.append(cb)

    def _notify_description(self) -> None:
        with self._lock:
            waiters, self._desc_waiters = self._desc_waiters, []
            desc = self._desc
        for loop, fut in waiters:

            def _set(f: asyncio.Future[None] = fut) -> None:
                if not f.done():
                    f.set_result(None)

            try:
                loop.call_soon_threadsafe(_set)
            except RuntimeError:
                pass
        for cb in list(self._listeners):
            cb(desc)


class TalkChannel(Protocol):
    """One talk session (ONVIF backchannel): RTP payloads in, audio out."""

    @property
    def codec(self) -> str: ...

    def write(self, rtp_payload: bytes) -> None:
        """Decode one RTP payload (PCMU/PCMA samples or an RFC 3640 AAC-hbr payload). Non-blocking."""
        ...

    def close(self) -> None:
        """Finish the session; for the WAV sink, the file is complete and renamed into place."""
        ...

    async def aclose(self) -> None: ...


class AudioSink(Protocol):
    """Two-way audio output: ALSA on the device, a WAV file per talk session in host mode."""

    def open(self, codec: str, clock_rate: int, *, channels: int = 1, config: bytes = b"") -> TalkChannel:
        """Start a talk session. ``config`` is the AAC AudioSpecificConfig from SDP ``config=``.

        Raises ``TalkBusy`` while another session is open (one talker at a time).
        """
        ...


def aac_description(sample_rate: int, channels: int, config: bytes) -> AudioDescription:
    """AudioDescription for AAC, checking the config agrees with rate and channels."""
    cfg = parse_aac_config(config)
    if cfg.sample_rate != sample_rate or cfg.channels != channels:
        raise BitstreamError("AAC config disagrees with the stream", code="media.bitstream_invalid")
    return AudioDescription(codec="aac", sample_rate=sample_rate, channels=channels, config=config)


__all__ = [
    "AUDIO_CODECS",
    "VIDEO_CLOCK_RATE",
    "VIDEO_CODECS",
    "AudioDescription",
    "AudioSink",
    "EncodedFrame",
    "FrameSubscription",
    "HubLimits",
    "StreamDescription",
    "StreamHub",
    "TalkChannel",
    "VideoDescription",
    "aac_description",
]
