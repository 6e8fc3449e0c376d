"""Fan-out of one packetized stream to many RTSP clients.

A frame is packetized once per stream and its interleaved RTP packets are joined into one
``bytes``; audio frames are held (at most one video frame interval) and joined with the next video
frame, so a client costs one write per video frame, and every client shares the same object. The current GOP
is kept packetized, so a client that starts playing gets a keyframe at once. Slow clients have a
bounded backlog: above it they skip to the next keyframe, and if they stay above it for
``slow_client_drop_s`` they are disconnected - one slow reader never holds back the others, since
nothing here ever waits for a client.

Pure logic with an injected ``now``; the writer objects are the asyncio transports' thin wrappers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from agent.media.frames import EncodedFrame, StreamDescription
from agent.rtsp.rtp import TrackPacketizer, interleave
from agent.rtsp.sdp import Track, stream_tracks


class ClientWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def buffered(self) -> int: ...

    def abort(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Chunk:
    track: int
    data: bytes  # interleaved RTP packets of one frame (plus an RTCP SR now and then)
    keyframe: bool
    seq: int  # sequence number of the first RTP packet
    rtp_ts: int


@dataclass(frozen=True, slots=True)
class TrackStart:
    """What RTP-Info tells a client about the first packet it will receive on a track."""

    track: int
    seq: int
    rtp_ts: int | None


@dataclass(slots=True, eq=False)
class Subscriber:
    writer: ClientWriter
    tracks: frozenset[int]
    limit: int
    drop_after_s: float
    skipping: bool = False  # dropping until the next keyframe
    slow_since: float | None = None
    bytes_sent: int = 0
    chunks_dropped: int = 0
    skips: int = 0
    closed: bool = False
    # clients that only set up audio never need a keyframe
    video: bool = field(default=False)

    def deliver(self, chunks: list[Chunk], joined: bytes, tracks: frozenset[int], now: float) -> None:
        """One write for one delivery: ``joined`` is every chunk's data in order (their tracks are
        ``tracks``); a client that takes all of them gets that very object, no copy, no loop."""
        if self.closed:
            return
        if self.writer.buffered() > self.limit:
            if self.slow_since is None:
                self.slow_since = now
            elif now - self.slow_since > self.drop_after_s:
                self.closed = True
                self.writer.abort("slow client")
                return
            if not self.skipping:
                self.skipping = self.video
                self.skips += 1
            self.chunks_dropped += sum(1 for c in chunks if c.track in self.tracks)
            return
        self.slow_since = None
        if not self.skipping and tracks <= self.tracks:
            self.writer.write(joined)
            self.bytes_sent += len(joined)
            return
        parts = []
        for c in chunks:
            if c.track not in self.tracks:
                continue
            if self.skipping:
                if not c.keyframe:
                    self.chunks_dropped += 1
                    continue
                self.skipping = False
            parts.append(c.data)
        if parts:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            self.writer.write(data)
            self.bytes_sent += len(data)

    def start(self, chunks: Iterable[Chunk]) -> None:
        """Send the cached GOP in one write."""
        data = b"".join(c.data for c in chunks if c.track in self.tracks)
        if data:
            self.writer.write(data)
            self.bytes_sent += len(data)


class StreamFeed:
    """The packetized form of one stream: per-track RTP state, the GOP cache, the subscribers."""

    def __init__(self, desc: StreamDescription, *, mtu: int, max_gop_bytes: int,
                 rtcp_interval_s: float, cname: str) -> None:
        self.description = desc
        self.tracks: list[Track] = stream_tracks(desc)
        self._by_kind = {t.kind: t for t in self.tracks}
        self.packetizers = {t.index: TrackPacketizer(t.codec, t.payload_type, t.clock_rate, mtu)
                            for t in self.tracks}
        self._max_gop = max_gop_bytes
        self._rtcp_interval = rtcp_interval_s
        self._cname = cname
        self._last_sr: dict[int, float] = {}
        self.gop: list[Chunk] = []
        self._gop_bytes = 0
        self._gop_valid = False
        self.subscribers: set[Subscriber] = set()
        self.frames = 0
        self.writes = 0  # deliveries (one write per subscriber each), for status and benchmarks
        video = self._by_kind.get("video")
        audio = self._by_kind.get("audio")
        # audio rides along with the next video frame's write (half the writes, and a TLS write
        # costs the same whether it carries 200 bytes or 16 KiB) but never waits longer than one
        # video frame interval for it
        self._hold_track = audio.index if audio is not None and video is not None else None
        fps = desc.video.fps if desc.video is not None and desc.video.fps > 0 else 25.0
        self._hold_s = 1.0 / fps
        self._pending: list[Chunk] = []
        self._pending_since = 0.0

    def publish(self, frame: EncodedFrame, now: float) -> Chunk | None:
        track = self._by_kind.get(frame.kind)
        if track is None or frame.codec != track.codec:
            return None
        pk = self.packetizers[track.index]
        packets = pk.packetize(frame.data, frame.pts, frame.wallclock)
        if not packets:
            return None
        ch = track.channel
        parts = [interleave(ch, p) for _, p in packets]
        if now - self._last_sr.get(track.index, -1e9) >= self._rtcp_interval:
            sr = pk.sender_report(self._cname)
            if sr is not None:
                parts.append(interleave(ch + 1, sr))
                self._last_sr[track.index] = now
        keyframe = frame.kind == "video" and frame.keyframe
        chunk = Chunk(track.index, b"".join(parts), keyframe, packets[0][0], pk.rtp_ts(frame.pts))
        self._cache(chunk)
        self.frames += 1
        if chunk.track == self._hold_track:
            if not self._pending:
                self._pending_since = now
            self._pending.append(chunk)
            if now - self._pending_since < self._hold_s:
                return chunk
            batch, self._pending = self._pending, []
        elif self._pending:
            batch, self._pending = [*self._pending, chunk], []
        else:
            batch = [chunk]
        self._deliver(batch, now)
        return chunk

    def _deliver(self, batch: list[Chunk], now: float) -> None:
        if len(batch) == 1:
            joined, tracks = batch[0].data, frozenset((batch[0].track,))
        else:
            joined, tracks = b"".join(c.data for c in batch), frozenset(c.track for c in batch)
        self.writes += 1
        for sub in tuple(self.subscribers):
            sub.deliver(batch, joined, tracks, now)
            if sub.closed:
                self.subscribers.discard(sub)

    def _cache(self, chunk: Chunk) -> None:
        if chunk.keyframe:
            self.gop = [chunk]
            self._gop_bytes = len(chunk.data)
            self._gop_valid = True
        elif self._gop_valid:
            if self._gop_bytes + len(chunk.data) > self._max_gop:
                self.gop, self._gop_bytes, self._gop_valid = [], 0, False
            else:
                self.gop.append(chunk)
                self._gop_bytes += len(chunk.data)

    def starts(self, tracks: Iterable[int]) -> list[TrackStart]:
        """RTP-Info for a client about to be attached: the first cached packet per track, or the
        next packet to be produced when the cache holds none for that track."""
        out = []
        for index in sorted(tracks):
            first = next((c for c in self.gop if c.track == index), None) if self._gop_valid else None
            if first is not None:
                out.append(TrackStart(index, first.seq, first.rtp_ts))
            else:
                out.append(TrackStart(index, self.packetizers[index].next_seq, None))
        return out

    def attach(self, writer: ClientWriter, tracks: frozenset[int], *, limit: int,
               drop_after_s: float) -> Subscriber:
        has_video = any(self.tracks[i].kind == "video" for i in tracks if i < len(self.tracks))
        sub = Subscriber(writer, tracks, limit, drop_after_s, video=has_video)
        if self._gop_valid:
            # held audio is cached already but goes out with the next delivery: not twice
            held = {id(c) for c in self._pending}
            sub.start(c for c in self.gop if id(c) not in held)
        elif has_video:
            sub.skipping = True
        self.subscribers.add(sub)
        return sub

    def detach(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def close_all(self, reason: str) -> None:
        for sub in tuple(self.subscribers):
            sub.closed = True
            sub.writer.abort(reason)
        self.subscribers.clear()
