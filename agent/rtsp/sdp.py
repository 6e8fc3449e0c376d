"""SDP (RFC 4566) for a live stream: one video track, an optional audio track, and the ONVIF
backchannel track when the client asked for it (``Require: www.onvif.org/ver20/backchannel``).

Track layout is fixed per stream, and so are the interleaved channels (track i -> 2i, 2i+1): all
clients of a stream then receive byte-identical interleaved frames, which is what lets the fan-out
share one buffer between clients. RTSP clients (FFmpeg, GStreamer, live555) take the channels the
server answers in SETUP's Transport header.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.media.frames import StreamDescription

VIDEO_PT = 96
AUDIO_DYNAMIC_PT = 97
# Backchannel: G.711 mu-law at 8 kHz, which every ONVIF client and GStreamer's examples can send.
BACKCHANNEL_CODEC = "pcmu"
BACKCHANNEL_PT = 0
BACKCHANNEL_RATE = 8000


@dataclass(frozen=True, slots=True)
class Track:
    index: int
    kind: str  # "video" | "audio" | "backchannel"
    codec: str
    payload_type: int
    clock_rate: int

    @property
    def control(self) -> str:
        return f"trackID={self.index}"

    @property
    def channel(self) -> int:
        return 2 * self.index


def stream_tracks(desc: StreamDescription) -> list[Track]:
    tracks: list[Track] = []
    if desc.video is not None:
        tracks.append(Track(0, "video", desc.video.codec, VIDEO_PT, desc.video.clock_rate))
    if desc.audio is not None:
        pt = desc.audio.static_payload_type
        tracks.append(Track(len(tracks), "audio", desc.audio.codec,
                            pt if pt is not None else AUDIO_DYNAMIC_PT, desc.audio.clock_rate))
    return tracks


def backchannel_track(index: int) -> Track:
    return Track(index, "backchannel", BACKCHANNEL_CODEC, BACKCHANNEL_PT, BACKCHANNEL_RATE)


def build_sdp(desc: StreamDescription, *, session_id: int, server_addr: str, title: str,
              backchannel: bool) -> bytes:
    ip_kind = "IP6" if ":" in server_addr else "IP4"
    lines = [
        "v=0",
        f"o=- {session_id} 1 IN {ip_kind} {server_addr}",
        f"s={title}",
        f"c=IN {ip_kind} {'::' if ip_kind == 'IP6' else '0.0.0.0'}",  # noqa: S104 - SDP wildcard
        "t=0 0",
        "a=control:*",
        "a=range:npt=now-",
    ]
    tracks = stream_tracks(desc)
    for track in tracks:
        lines.append(f"m={'video' if track.kind == 'video' else 'audio'} 0 RTP/AVP {track.payload_type}")
        if track.kind == "video" and desc.video is not None:
            lines.append(f"a=rtpmap:{track.payload_type} {desc.video.encoding_name}/{track.clock_rate}")
            lines.append(f"a=fmtp:{track.payload_type} {desc.video.fmtp()}")
            if desc.video.fps:
                lines.append(f"a=framerate:{desc.video.fps:g}")
        elif desc.audio is not None:
            lines.append(f"a=rtpmap:{track.payload_type} {desc.audio.rtpmap()}")
            fmtp = desc.audio.fmtp()
            if fmtp:
                lines.append(f"a=fmtp:{track.payload_type} {fmtp}")
        lines.append(f"a=control:{track.control}")
        lines.append("a=recvonly")
    if backchannel:
        bc = backchannel_track(len(tracks))
        lines.append(f"m=audio 0 RTP/AVP {bc.payload_type}")
        lines.append(f"a=rtpmap:{bc.payload_type} PCMU/{bc.clock_rate}")
        lines.append(f"a=control:{bc.control}")
        # ONVIF Streaming 5.3: the client sends on this track, so it is "sendonly" in our SDP
        lines.append("a=sendonly")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
