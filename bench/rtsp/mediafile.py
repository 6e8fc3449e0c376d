"""The benchmark's pre-encoded input: 1080p30 H.264 (~4 Mbit/s, GOP 60, no B-frames) + PCMU 8 kHz
in QuickTime (mov: a container both FFmpeg and GStreamer carry G.711 in), encoded once per run
with PyAV so the encoder's cost is never part of a measurement."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from agent.media.annexb import avcc_to_annexb, is_annexb
from agent.media.frames import AudioDescription, EncodedFrame, StreamDescription, VideoDescription
from agent.rtsp.fanout import StreamFeed


def make_file(path: Path, seconds: int, *, size: tuple[int, int] = (1920, 1080), fps: int = 30,
              kbps: int = 4000) -> Path:
    out = av.open(str(path), "w", format="mov")
    v = out.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
    v.bit_rate = kbps * 1000
    v.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(fps * 2), "bf": "0",
                 "x264-params": f"vbv-maxrate={kbps}:vbv-bufsize={kbps}:nal-hrd=none"}
    a = out.add_stream("pcm_mulaw", rate=8000)
    a.layout = "mono"
    vsrc = av.open(f"testsrc2=size={size[0]}x{size[1]}:rate={fps}", format="lavfi")
    asrc = av.open("sine=frequency=1000:sample_rate=8000:samples_per_frame=160", format="lavfi")
    try:
        vframes, aframes = vsrc.decode(video=0), asrc.decode(audio=0)
        n_audio = 0
        for i in range(seconds * fps):
            frame = next(vframes).reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for pkt in v.encode(frame):
                out.mux(pkt)
            while n_audio * 160 <= (i + 1) * 8000 // fps:
                af = next(aframes)
                af.pts, af.time_base = n_audio * 160, Fraction(1, 8000)
                for pkt in a.encode(af):
                    out.mux(pkt)
                n_audio += 1
        for stream in (v, a):
            for pkt in stream.encode(None):
                out.mux(pkt)
    finally:
        out.close()
        vsrc.close()
        asrc.close()
    return path


class _Recorder:
    """A client of the fan-out that records what it is written (and is never slow)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.writes: list[tuple[float, bytes]] = []

    def write(self, data: bytes) -> None:
        self.writes.append((self.now, data))

    def buffered(self) -> int:
        return 0

    def abort(self, reason: str) -> None:
        raise AssertionError(reason)


def write_schedule(path: Path, mtu: int = 1400) -> list[tuple[float, bytes]]:
    """(time, bytes) of every write our server makes to one client for this file: the fan-out
    itself (``StreamFeed``: packetization, audio coalesced with the next video frame, RTCP SRs)
    fed the file's packets - the input of the TLS floor measurement, same sizes, same pacing."""
    with av.open(str(path)) as c:
        vs, aus = c.streams.video[0], c.streams.audio[0]
        desc = StreamDescription("main", VideoDescription("h264", vs.codec_context.width, vs.codec_context.height,
                                                          float(vs.average_rate or 30)),
                                 AudioDescription("pcmu", aus.codec_context.sample_rate, 1))
        frames = []
        for pkt in c.demux():
            if pkt.size == 0 or pkt.pts is None or pkt.time_base is None:
                continue
            t = float(pkt.pts * pkt.time_base)
            data = bytes(pkt)
            if pkt.stream.type == "video":
                if not is_annexb(data):
                    data = avcc_to_annexb(data)
                frames.append(EncodedFrame("main", "video", "h264", data, round(t * 90000), 90000,
                                           bool(pkt.is_keyframe), t))
            else:
                rate = aus.codec_context.sample_rate
                frames.append(EncodedFrame("main", "audio", "pcmu", data, round(t * rate), rate, True, t))
    frames.sort(key=lambda f: f.wallclock)
    feed = StreamFeed(desc, mtu=mtu, max_gop_bytes=64 << 20, rtcp_interval_s=5.0, cname="floor")
    rec = _Recorder()
    feed.attach(rec, frozenset(t.index for t in feed.tracks), limit=1 << 30, drop_after_s=1.0)
    t0 = frames[0].wallclock
    for f in frames:
        rec.now = f.wallclock - t0
        feed.publish(f, rec.now)
    return rec.writes
