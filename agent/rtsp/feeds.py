"""Stream pumps: one hub subscription per stream feeds one ``StreamFeed`` shared by all clients.

A pump starts when the first client asks for a stream and stops ``pump_linger_s`` after the last
one left, so an unwatched stream costs no packetization.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from agent.media.errors import HubClosed
from agent.media.frames import EncodedFrame, StreamDescription
from agent.rtsp.config import RtspConfig
from agent.rtsp.errors import MediaUnavailable, StreamNotFound
from agent.rtsp.fanout import StreamFeed

log = logging.getLogger(__name__)


class FrameSource(Protocol):
    """What RTSP uses of ``agent.media.frames.StreamHub``."""

    def describe(self) -> StreamDescription: ...

    async def wait_ready(self) -> StreamDescription: ...

    def subscribe(self, *, kinds: tuple[str, ...] = ..., maxsize: int | None = ...) -> _Subscription: ...


class _Subscription(Protocol):
    def __aiter__(self) -> _Subscription: ...

    async def __anext__(self) -> EncodedFrame: ...

    def close(self) -> None: ...


class _Pump:
    def __init__(self, feed: StreamFeed, task: asyncio.Task[None]) -> None:
        self.feed = feed
        self.task = task
        self.idle_since: float | None = None


class FeedManager:
    def __init__(self, hubs: Mapping[str, FrameSource], cfg: RtspConfig, *, cname: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._hubs = hubs
        self._cfg = cfg
        self._cname = cname
        self._clock = clock
        self._pumps: dict[str, _Pump] = {}

    @property
    def streams(self) -> list[str]:
        return sorted(self._hubs)

    def _hub(self, stream: str) -> FrameSource:
        hub = self._hubs.get(stream)
        if hub is None:
            raise StreamNotFound(f"no stream {stream!r}")
        return hub

    async def description(self, stream: str) -> StreamDescription:
        hub = self._hub(stream)
        try:
            async with asyncio.timeout(self._cfg.first_keyframe_wait_s):
                return await hub.wait_ready()
        except (TimeoutError, HubClosed) as exc:
            raise MediaUnavailable(f"stream {stream} has no picture yet",
                                   code="rtsp.media_not_ready") from exc

    async def feed(self, stream: str) -> StreamFeed:
        desc = await self.description(stream)
        pump = self._pumps.get(stream)
        if pump is not None and not pump.task.done() and pump.feed.description.generation == desc.generation:
            return pump.feed
        if pump is not None:
            await self._stop(stream, "stream reconfigured")
        feed = StreamFeed(desc, mtu=self._cfg.rtp_mtu, max_gop_bytes=self._cfg.max_gop_bytes,
                          rtcp_interval_s=self._cfg.rtcp_interval_s, cname=self._cname)
        sub = self._hub(stream).subscribe()
        task = asyncio.create_task(self._run(stream, feed, sub), name=f"rtsp-pump-{stream}")
        self._pumps[stream] = _Pump(feed, task)
        return feed

    async def _run(self, stream: str, feed: StreamFeed, sub: _Subscription) -> None:
        hub = self._hub(stream)
        clock = self._clock
        try:
            async for frame in sub:
                generation = feed.description.generation
                if frame.kind == "video" and frame.keyframe and hub.describe().generation != generation:
                    # codec or resolution changed: clients must DESCRIBE again
                    feed.close_all("stream reconfigured")
                    break
                feed.publish(frame, clock())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rtsp pump for %s failed", stream)
            feed.close_all("stream failed")
        finally:
            sub.close()

    def housekeeping(self) -> None:
        now = self._clock()
        for stream, pump in list(self._pumps.items()):
            if pump.task.done():
                del self._pumps[stream]
                continue
            if pump.feed.subscribers:
                pump.idle_since = None
            elif pump.idle_since is None:
                pump.idle_since = now
            elif now - pump.idle_since > self._cfg.pump_linger_s:
                pump.task.cancel()
                del self._pumps[stream]

    async def _stop(self, stream: str, reason: str) -> None:
        pump = self._pumps.pop(stream, None)
        if pump is None:
            return
        pump.feed.close_all(reason)
        pump.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump.task

    async def close(self) -> None:
        for stream in list(self._pumps):
            await self._stop(stream, "server stopping")
