"""The benchmark's pre-encoded input: 1080p30 H.264 (~4 Mbit/s, GOP 60, no B-frames) + PCMU 8 kHz
in QuickTime (mov: a container both FFmpeg and GStreamer carry G.711 in), encoded once per run
with PyAV so the encoder's cost is never part of a measurement."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from agent.media.annexb import avcc_to_annexb, is_annexb
from agent.rtsp.rtp import TrackPacketizer, interleave


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


def write_schedule(path: Path, mtu: int = 1400) -> list[tuple[float, bytes]]:
    """(time, bytes) of every frame as our server writes it: RTP-packetized, interleaved, one
    buffer per frame - the input of the TLS floor measurement."""
    video = TrackPacketizer("h264", 96, 90000, mtu)
    audio = TrackPacketizer("pcmu", 0, 8000, mtu)
    out: list[tuple[float, bytes]] = []
    with av.open(str(path)) as c:
        for pkt in c.demux():
            if pkt.size == 0 or pkt.pts is None or pkt.time_base is None:
                continue
            t = float(pkt.pts * pkt.time_base)
            data = bytes(pkt)
            if pkt.stream.type == "video":
                if not is_annexb(data):
                    data = avcc_to_annexb(data)
                packets = video.packetize(data, round(t * 90000), t)
                ch = 0
            else:
                packets = audio.packetize(data, round(t * 8000), t)
                ch = 2
            out.append((t, b"".join(interleave(ch, p) for _, p in packets)))
    out.sort(key=lambda x: x[0])
    t0 = out[0][0]
    return [(t - t0, d) for t, d in out]
