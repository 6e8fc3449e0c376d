"""StreamHub semantics: bounded queues, GOP cache, lagging subscribers, thread-safe publish."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent.media.errors import HubClosed
from agent.media.frames import EncodedFrame, HubLimits, StreamHub, VideoDescription

SPS = b"\x67\x42\xc0\x1e\xda\x02\x80"
PPS = b"\x68\xce\x3c\x80"


def vframe(i: int, key: bool, stream: str = "main") -> EncodedFrame:
    data = (b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x00\x01" + PPS + b"\x00\x00\x00\x01\x65" if key else
            b"\x00\x00\x00\x01\x41") + i.to_bytes(4, "big")
    return EncodedFrame(stream, "video", "h264", data, i * 3000, 90000, key, float(i))


def aframe(i: int) -> EncodedFrame:
    return EncodedFrame("main", "audio", "pcmu", bytes(160), i * 160, 8000, True, float(i))


def gop_stream(n: int, gop: int) -> list[EncodedFrame]:
    return [vframe(i, i % gop == 0) for i in range(n)]


def ids(frames: list[EncodedFrame]) -> list[int]:
    return [int.from_bytes(f.data[-4:], "big") for f in frames if f.kind == "video"]


def drain(sub: object) -> list[EncodedFrame]:
    out = []
    while (f := sub.get_nowait()) is not None:  # type: ignore[attr-defined]
        out.append(f)
    return out


async def test_new_subscriber_starts_on_cached_keyframe() -> None:
    hub = StreamHub("main")
    hub.configure(VideoDescription("h264", 320, 180, 15.0), None)
    for f in gop_stream(13, 5):  # keyframes at 0, 5, 10
        hub.publish(f)
        if f.pts == 11 * 3000:
            hub.publish(aframe(1))
    sub = hub.subscribe()
    got = drain(sub)
    assert got[0].keyframe and ids(got) == [10, 11, 12]
    assert [f.kind for f in got] == ["video", "video", "audio", "video"]  # audio in between kept
    hub.publish(vframe(13, False))
    assert ids(drain(sub)) == [13]


async def test_subscriber_without_cache_waits_for_keyframe() -> None:
    hub = StreamHub("main")
    hub.configure(VideoDescription("h264", 320, 180, 15.0), None)
    sub = hub.subscribe()
    for f in [vframe(1, False), vframe(2, False), vframe(3, True), vframe(4, False)]:
        hub.publish(f)
    assert ids(drain(sub)) == [3, 4]
    assert sub.dropped == 2


async def test_description_learns_parameter_sets_from_keyframe() -> None:
    hub = StreamHub("main")
    hub.configure(VideoDescription("h264", 320, 180, 15.0), None)
    assert not hub.describe().ready
    waiter = asyncio.create_task(hub.wait_ready())
    await asyncio.sleep(0)
    assert not waiter.done()
    await asyncio.to_thread(hub.publish, vframe(0, True))
    async with asyncio.timeout(2):
        desc = await waiter
    assert desc.video is not None and desc.video.sps == SPS and desc.video.pps == PPS
    assert desc.video.profile_level_id == "42c01e"
    gen = desc.generation
    hub.configure(VideoDescription("h264", 640, 360, 15.0), None)
    assert hub.describe().generation == gen + 1 and not hub.describe().ready
    assert hub.gop_cache_len() == 0  # the old GOP must not be served with new parameters


async def test_bounded_queue_marks_lagging_and_resyncs_on_keyframe() -> None:
    hub = StreamHub("main")
    hub.configure(VideoDescription("h264", 320, 180, 15.0), None)
    hub.publish(vframe(0, True))
    slow = hub.subscribe(maxsize=4)
    fast = hub.subscribe(maxsize=100)
    for f in gop_stream(30, 10)[1:]:  # frames 1..29, keyframes 10 and 20
        hub.publish(f)
    assert fast.qsize() == 30 and not fast.lagging
    assert slow.qsize() == 4 and slow.lagging and slow.lag_events == 1
    got = drain(slow)
    assert ids(got) == [0, 1, 2, 3]
    # after draining, the next frames are P-frames whose references were lost: skipped
    hub.publish(vframe(30, True))  # a keyframe resynchronises
    hub.publish(vframe(31, False))
    assert ids(drain(slow)) == [30, 31] and not slow.lagging
    assert slow.dropped == 26


async def test_publish_never_blocks_with_a_stalled_reader() -> None:
    hub = StreamHub("main", HubLimits(queue_frames=8))
    hub.configure(VideoDescription("h264", 320, 180, 15.0), None)
    sub = hub.subscribe()  # never read

    def producer() -> None:
        for f in gop_stream(5000, 50):
            hub.publish(f)

    t = threading.Thread(target=producer)
    t.start()
    await asyncio.to_thread(t.join, 10)
    assert not t.is_alive()
    assert sub.qsize() <= 8 and sub.lagging


async def test_thread_safe_publish_many_threads() -> None:
    hub = StreamHub("main", HubLimits(queue_frames=100_000, gop_cache_frames=100_000))
    hub.configure(VideoDescription("h264", 320, 180, 15.0), None)
    hub.publish(vframe(0, True))
    sub = hub.subscribe()
    received: list[EncodedFrame] = []

    async def consume() -> None:
        async for f in sub:
            received.append(f)
            if len(received) == 1 + 4 * 2000:
                return

    task = asyncio.create_task(consume())

    def producer(k: int) -> None:
        for i in range(2000):
            hub.publish(vframe(1 + k * 2000 + i, False))

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    async with asyncio.timeout(20):
        await task
    for t in threads:
        t.join()
    assert sorted(ids(received)) == list(range(1 + 4 * 2000))
    assert sub.dropped == 0 and hub.published == 1 + 8000
    # each producer's frames arrive in its own order
    for k in range(4):
        mine = [i for i in ids(received) if 1 + k * 2000 <= i < 1 + (k + 1) * 2000]
        assert mine == sorted(mine)


async def test_gop_cache_bounded() -> None:
    hub = StreamHub("main", HubLimits(gop_cache_frames=10))
    hub.configure(VideoDescription("h264", 320, 180, 15.0), None)
    for f in gop_stream(8, 100):
        hub.publish(f)
    assert hub.gop_cache_len() == 8
    for i in range(8, 20):
        hub.publish(vframe(i, False))
    assert hub.gop_cache_len() == 0  # outgrown: dropped rather than served partially
    sub = hub.subscribe()
    hub.publish(vframe(20, False))
    hub.publish(vframe(21, True))
    assert ids(drain(sub)) == [21]


async def test_close_ends_iteration_and_refuses_new_subscribers() -> None:
    hub = StreamHub("main")
    hub.configure(VideoDescription("h264", 320, 180, 15.0), None)
    sub = hub.subscribe()
    got: list[EncodedFrame] = []

    async def consume() -> None:
        async for f in sub:
            got.append(f)

    task = asyncio.create_task(consume())
    hub.publish(vframe(0, True))
    await asyncio.sleep(0.01)
    hub.close()
    async with asyncio.timeout(2):
        await task
    assert ids(got) == [0]
    with pytest.raises(HubClosed):
        hub.subscribe()


async def test_unsubscribe_and_limits() -> None:
    hub = StreamHub("main", HubLimits(max_subscribers=2))
    a = hub.subscribe()
    async with hub.subscribe():
        assert hub.subscriber_count() == 2
        with pytest.raises(HubClosed) as ei:
            hub.subscribe()
        assert ei.value.code == "media.too_many_subscribers"
    assert hub.subscriber_count() == 1
    a.close()
    assert hub.subscriber_count() == 0
    with pytest.raises(HubClosed):
        await a.get()


async def test_wrong_stream_refused() -> None:
    hub = StreamHub("sub")
    with pytest.raises(ValueError):
        hub.publish(vframe(0, True, stream="main"))


async def test_video_only_subscription_skips_audio() -> None:
    hub = StreamHub("main")
    hub.configure(VideoDescription("h264", 320, 180, 15.0), None)
    sub = hub.subscribe(kinds=("video",))
    hub.publish(vframe(0, True))
    hub.publish(aframe(0))
    assert [f.kind for f in drain(sub)] == ["video"]


async def test_aac_stream_ready_only_with_config() -> None:
    from agent.media.frames import AudioDescription

    hub = StreamHub("main")
    hub.configure(VideoDescription("h264", 320, 180, 15.0), AudioDescription("aac", 16000, 1))
    hub.publish(vframe(0, True))
    assert not hub.describe().ready  # SDP would lack config=
    hub.set_audio(AudioDescription("aac", 16000, 1, config=bytes.fromhex("1408")))
    async with asyncio.timeout(1):
        desc = await hub.wait_ready()
    assert desc.audio is not None
    assert (desc.audio.fmtp() or "").endswith("indexdeltalength=3;config=1408")
    assert desc.audio.rtpmap() == "mpeg4-generic/16000/1" and desc.audio.static_payload_type is None
