"""Fan-out core: shared bytes, GOP start, RTP-Info, slow clients, SDP, session state, talk lock."""

from __future__ import annotations

import struct

import pytest

from agent.media.annexb import parameter_sets
from agent.media.frames import AudioDescription, EncodedFrame, StreamDescription, VideoDescription
from agent.rtsp.errors import MethodNotValid, SessionNotFound, TalkBusy
from agent.rtsp.fanout import StreamFeed
from agent.rtsp.sdp import build_sdp
from agent.rtsp.session import SessionTable, State, TalkLock
from tests.rtsp.test_rtp import encode


class Writer:
    """In-memory stand-in for an asyncio transport's write buffer (the seam the adapter fills)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.backlog = 0
        self.aborted: str | None = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def buffered(self) -> int:
        return self.backlog

    def abort(self, reason: str) -> None:
        self.aborted = reason


@pytest.fixture(scope="module")
def aus() -> list[bytes]:
    return encode("libx264", n=12)


def description(aus: list[bytes]) -> StreamDescription:
    ps = parameter_sets("h264", aus[0])
    return StreamDescription("main", VideoDescription("h264", 320, 240, 30, sps=ps.sps, pps=ps.pps),
                             AudioDescription("pcmu", 8000, 1))


def frames(aus: list[bytes], gop: int = 4) -> list[EncodedFrame]:
    out = []
    for i, au in enumerate(aus):
        out.append(EncodedFrame("main", "video", "h264", au, i * 3000, 90000, i % gop == 0, 100 + i / 30))
        out.append(EncodedFrame("main", "audio", "pcmu", b"\xff" * 160, i * 266, 8000, True, 100 + i / 30))
    return out


def make_feed(aus: list[bytes]) -> StreamFeed:
    return StreamFeed(description(aus), mtu=1400, max_gop_bytes=1 << 20, rtcp_interval_s=1.0, cname="t")


def split_interleaved(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        assert data[pos] == 0x24
        ch, n = data[pos + 1], struct.unpack("!H", data[pos + 2 : pos + 4])[0]
        out.append((ch, data[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return out


def test_sdp_has_rfc_parameters(aus: list[bytes]) -> None:
    sdp = build_sdp(description(aus), session_id=1, server_addr="127.0.0.1", title="cam", backchannel=True)
    text = sdp.decode()
    assert "a=rtpmap:96 H264/90000" in text and "packetization-mode=1" in text
    assert "profile-level-id=" + description(aus).video.profile_level_id in text  # type: ignore[union-attr]
    assert "sprop-parameter-sets=" in text
    assert "m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:trackID=1\r\na=recvonly" in text
    # the backchannel comes last and is sendonly (ONVIF)
    assert text.rstrip().endswith("a=control:trackID=2\r\na=sendonly")


def _seqs(chunks: list[bytes], channel: int) -> list[int]:
    return [struct.unpack("!H", p[2:4])[0] for c in chunks for ch, p in split_interleaved(c) if ch == channel]


def test_all_clients_share_one_write_per_frame_and_start_on_keyframe(aus: list[bytes]) -> None:
    feed = make_feed(aus)
    fs = frames(aus)
    for f in fs[:6]:  # frames 0..2 (keyframe 0) with audio; the last audio frame is held
        feed.publish(f, 0.0)
    a, a2, b = Writer(), Writer(), Writer()
    starts = feed.starts({0, 1})
    sa = feed.attach(a, frozenset({0, 1}), limit=1 << 20, drop_after_s=5)
    feed.attach(a2, frozenset({0, 1}), limit=1 << 20, drop_after_s=5)
    feed.attach(b, frozenset({0}), limit=1 << 20, drop_after_s=5)
    # GOP start: first packet is the keyframe's, and RTP-Info names exactly that packet
    first = split_interleaved(a.chunks[0])
    assert first[0][0] == 0
    seq, ts = struct.unpack("!HI", first[0][1][2:8])
    assert (starts[0].seq, starts[0].rtp_ts) == (seq, ts)
    writes0 = feed.writes
    for i, f in enumerate(fs[6:]):
        feed.publish(f, 0.5 + i // 2 / 30)
    live_a, live_a2, live_b = a.chunks[1:], a2.chunks[1:], b.chunks[1:]
    # one write per video frame per client, the held audio in front of the video
    n_video = len(fs[6:]) // 2
    assert len(live_a) == len(live_b) == n_video == feed.writes - writes0
    assert all(split_interleaved(w)[0][0] == 2 for w in live_a)
    assert all(x is y for x, y in zip(live_a, live_a2, strict=True))  # the same object, not a copy
    assert all({ch for ch, _ in split_interleaved(w)} <= {0, 1} for w in live_b)
    assert all(x.endswith(y) for x, y in zip(live_a, live_b, strict=True))
    # nothing twice, nothing lost: both tracks' sequence numbers run on from the GOP start
    for channel in (0, 2):
        got = _seqs(a.chunks, channel)
        assert got == [(got[0] + k) & 0xFFFF for k in range(len(got))]
    assert len(_seqs(a.chunks, 2)) == len(fs) // 2 - 1  # the last audio frame is still held
    assert sa.bytes_sent == sum(len(c) for c in a.chunks)


def test_held_audio_waits_at_most_one_frame_interval(aus: list[bytes]) -> None:
    feed = make_feed(aus)
    fs = frames(aus)
    feed.publish(fs[0], 0.0)
    w = Writer()
    feed.attach(w, frozenset({0, 1}), limit=1 << 20, drop_after_s=5)
    audio = [f for f in fs if f.kind == "audio"]
    feed.publish(audio[0], 1.0)
    feed.publish(audio[1], 1.02)
    assert len(w.chunks) == 1  # held: within one frame interval (1/30 s) of the first held one
    feed.publish(audio[2], 1.04)  # video stalled: the audio goes out on its own
    got = _seqs(w.chunks[1:], 2)
    assert len(w.chunks) == 2 and got == [(got[0] + k) & 0xFFFF for k in range(3)]


def test_slow_client_skips_to_keyframe_then_is_dropped(aus: list[bytes]) -> None:
    feed = make_feed(aus)
    fs = [f for f in frames(aus) if f.kind == "video"]
    feed.publish(fs[0], 0.0)
    slow, fast = Writer(), Writer()
    sub = feed.attach(slow, frozenset({0}), limit=1000, drop_after_s=2.0)
    feed.attach(fast, frozenset({0}), limit=1000, drop_after_s=2.0)
    slow.backlog = 5000
    feed.publish(fs[1], 0.1)  # over the limit: skipped
    feed.publish(fs[2], 0.2)
    slow.backlog = 0
    feed.publish(fs[3], 0.3)  # drained, but a P-frame: still skipping
    assert sub.skipping and len(slow.chunks) == 1
    feed.publish(fs[4], 0.4)  # keyframe: resumes
    assert not sub.skipping and len(slow.chunks) == 2
    assert len(fast.chunks) == 5  # the fast client never missed a frame
    slow.backlog = 5000
    for i, f in enumerate(fs[5:], start=5):
        feed.publish(f, 0.5 + i)
    assert slow.aborted == "slow client" and sub not in feed.subscribers
    assert len(fast.chunks) == len(fs)


def test_rtcp_sender_reports_on_rtcp_channel(aus: list[bytes]) -> None:
    feed = make_feed(aus)
    w = Writer()
    feed.publish(frames(aus)[0], 0.0)
    feed.attach(w, frozenset({0, 1}), limit=1 << 20, drop_after_s=5)
    for i, f in enumerate(frames(aus)[1:]):
        feed.publish(f, 0.3 * i)
    channels = [ch for c in w.chunks for ch, _ in split_interleaved(c)]
    assert 1 in channels and 3 in channels
    srs = [p for c in w.chunks for ch, p in split_interleaved(c) if ch == 1]
    assert all(p[1] == 200 for p in srs)


def test_session_state_machine() -> None:
    t = SessionTable(4)
    s = t.create(connection_id=1, username="u", source="a", stream="main", now=0.0)
    with pytest.raises(MethodNotValid):
        s.play(1.0)
    with pytest.raises(MethodNotValid):
        s.pause(1.0)
    s.setup(0, backchannel=False, now=1.0)
    assert s.state is State.READY
    assert s.play(2.0) and not s.play(3.0)
    assert s.state.value == "playing"
    with pytest.raises(MethodNotValid):
        s.setup(1, backchannel=False, now=3.0)
    assert s.pause(4.0) and s.state is State.READY
    assert t.get(f"{s.id};timeout=60", 1) is s
    with pytest.raises(SessionNotFound):
        t.get(s.id, 2)  # another connection cannot use it
    with pytest.raises(SessionNotFound):
        t.get("nope", 1)
    assert s.expired(100.0, 60) and not s.expired(10.0, 60)
    for _ in range(3):
        t.create(connection_id=1, username="u", source="a", stream="main", now=0.0)
    with pytest.raises(TalkBusy):
        t.create(connection_id=1, username="u", source="a", stream="main", now=0.0)


def test_talk_lock() -> None:
    lock = TalkLock(silence_s=5.0)
    lock.acquire("s1", "oper", 0.0)
    lock.acquire("s1", "oper", 1.0)  # idempotent for the holder
    with pytest.raises(TalkBusy) as info:
        lock.acquire("s2", "oper2", 1.0)
    assert info.value.status == 453 and info.value.headers["talker"] == "oper"
    assert lock.touch("s1", 4.0) and not lock.touch("s2", 4.0)
    assert lock.silent(8.0) is None and lock.silent(9.5) == "s1"
    assert not lock.release("s2") and lock.release("s1")
    lock.acquire("s2", "oper2", 10.0)
