"""Configuration of the media capability: the "media" config section and per-stream settings.

Two inputs, kept apart: the device config (section "media": which source, device paths, encoder
names, limits - fixed per product) and the user settings (``SettingsStore.current()``: codec,
size, rate, bitrate, GOP, audio on/off/codec, input, gain, noise filter - changed at run time).
``stream_config`` folds both into one frozen ``StreamConfig`` per stream; a pipeline is restarted
exactly when its ``StreamConfig`` changes, which is how a settings change touches only the stream
it concerns.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.media.errors import MediaError
from agent.media.limits import AUDIO_CODECS, VIDEO_CODECS, HubLimits

SOURCE_KINDS = ("synthetic", "capture", "rtsp", "file")
AUDIO_INPUTS = ("builtin_mic", "external_mic", "line_in")


def _err(msg: str) -> MediaError:
    return MediaError(msg, code="media.config_invalid")


@dataclass(frozen=True)
class VideoConfig:
    codec: str  # h264 | h265
    width: int
    height: int
    fps: int
    bitrate_kbps: int
    gop: int
    encoder: str  # FFmpeg encoder name, e.g. libx264, h264_v4l2m2m
    threads: int = 0  # software encoder threads; 0 = encoder's choice


@dataclass(frozen=True)
class AudioConfig:
    codec: str  # pcmu | pcma | aac
    sample_rate: int
    input: str
    device: str  # capture device for ``input`` (ALSA name) or the synthetic tone frequency
    gain_db: float
    noise_filter: bool
    bitrate_kbps: int  # AAC only


@dataclass(frozen=True)
class StreamConfig:
    stream: str
    source: str  # one of SOURCE_KINDS
    video: VideoConfig
    audio: AudioConfig | None  # None: audio off for this stream
    location: str = ""  # V4L2 device, upstream RTSP URL or file path (unused for synthetic)
    raw_queue_frames: int = 8  # pictures between capture and encoder (8 x 3 MiB at 1080p)
    capture_format: str = "v4l2"  # FFmpeg input format of the capture source's video


@dataclass(frozen=True)
class BackoffConfig:
    initial_s: float = 0.5
    max_s: float = 30.0
    healthy_s: float = 10.0  # running this long resets the backoff


@dataclass(frozen=True)
class MediaConfig:
    source: str = "synthetic"
    video_devices: Mapping[str, str] = field(default_factory=lambda: {"main": "/dev/video0", "sub": "/dev/video1"})
    audio_devices: Mapping[str, str] = field(
        default_factory=lambda: {"builtin_mic": "default", "external_mic": "default", "line_in": "default"}
    )
    # The synthetic camera gives each input its own tone so input selection is observable.
    synthetic_tones: Mapping[str, int] = field(
        default_factory=lambda: {"builtin_mic": 440, "external_mic": 1000, "line_in": 1500}
    )
    upstream: Mapping[str, str] = field(default_factory=dict)  # stream -> rtsp:// URL (OEM encoder)
    files: Mapping[str, str] = field(default_factory=dict)  # stream -> media file played in a loop
    encoders: Mapping[str, str] = field(default_factory=lambda: {"h264": "libx264", "h265": "libx265"})
    aac_sample_rate: int = 16000
    aac_bitrate_kbps: int = 32
    # 0 = the encoder's own choice (x264: sliced threads, ~1.5x cores). One thread per stream was
    # cheaper on an idle 2-core machine but fell to 15-18 fps at 1080p30 when the machine was
    # loaded (a single thread gets one share of the CPU); see docs/benchmarks-media.md.
    encoder_threads: int = 0
    # Raw pictures buffered between capture and the encoder thread: absorbs scheduling hiccups
    # (~0.27 s at 30 fps) at 3 MiB per 1080p picture; beyond it pictures are dropped at the source.
    raw_queue_frames: int = 8
    # FFmpeg input format for the capture source's video: "v4l2" on Linux cameras; a vendor or
    # test input (e.g. "lavfi") can be named instead.
    capture_video_format: str = "v4l2"
    talk_output: str = "wav"  # wav | alsa
    talk_wav_dir: Path | None = None
    talk_alsa_device: str = "default"
    talk_max_seconds: int = 600  # a talk session longer than this is cut (bounded WAV size)
    hub: HubLimits = field(default_factory=HubLimits)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    upstream_timeout_s: float = 5.0


_LOOPBACK_HOSTS = ("localhost",)


def _check_upstream(url: str) -> str:
    """The upstream is the OEM's encoder daemon on this device: loopback only.

    Plain RTSP to another host would put video (and RTSP credentials) on the network in clear
    (ER 2.2), and FFmpeg does not validate rtsps:// certificates, so a remote upstream is refused
    whatever the scheme.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
        raise _err("media.upstream must be an rtsp:// or rtsps:// URL")
    host = parts.hostname
    if host not in _LOOPBACK_HOSTS:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise _err("media.upstream must point to a loopback address (the on-device encoder)")
    return url


def _str_map(raw: Any, name: str) -> dict[str, str]:
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise _err(f"media.{name} must be an object")
    return {k: str(v) for k, v in raw.items()}


def parse_media_config(section: Mapping[str, Any], state_root: Path) -> MediaConfig:
    """Validate the "media" config section; unknown keys are errors so typos do not go unnoticed."""
    base = MediaConfig()
    known = {f for f in MediaConfig.__dataclass_fields__}
    unknown = set(section) - known
    if unknown:
        raise _err(f"unknown media config keys: {sorted(unknown)}")
    source = str(section.get("source", base.source))
    if source not in SOURCE_KINDS:
        raise _err(f"media.source must be one of {SOURCE_KINDS}")
    talk_output = str(section.get("talk_output", base.talk_output))
    if talk_output not in ("wav", "alsa"):
        raise _err("media.talk_output must be wav or alsa")
    hub_raw = section.get("hub", {})
    backoff_raw = section.get("backoff", {})
    if not isinstance(hub_raw, Mapping) or not isinstance(backoff_raw, Mapping):
        raise _err("media.hub and media.backoff must be objects")
    try:
        hub = HubLimits(**{k: int(v) for k, v in hub_raw.items()})
        backoff = BackoffConfig(**{k: float(v) for k, v in backoff_raw.items()})
    except TypeError as exc:
        raise _err(f"unknown key: {exc}") from exc
    if min(hub.queue_frames, hub.gop_cache_frames, hub.gop_cache_bytes, hub.max_subscribers) < 1:
        raise _err("media.hub limits must be positive")
    if backoff.initial_s <= 0 or backoff.max_s < backoff.initial_s:
        raise _err("media.backoff: 0 < initial_s <= max_s")
    if not 0 <= int(section.get("encoder_threads", 0)) <= 16:
        raise _err("media.encoder_threads must be 0..16")
    if not 1 <= int(section.get("raw_queue_frames", 8)) <= 120:
        raise _err("media.raw_queue_frames must be 1..120")
    tones = {
        k: int(v) for k, v in _str_map(section.get("synthetic_tones", base.synthetic_tones), "synthetic_tones").items()
    }
    wav_dir = section.get("talk_wav_dir")
    return MediaConfig(
        source=source,
        video_devices=_str_map(section.get("video_devices", base.video_devices), "video_devices"),
        audio_devices=_str_map(section.get("audio_devices", base.audio_devices), "audio_devices"),
        synthetic_tones=tones,
        upstream={k: _check_upstream(v) for k, v in _str_map(section.get("upstream", {}), "upstream").items()},
        files=_str_map(section.get("files", {}), "files"),
        encoders={**base.encoders, **_str_map(section.get("encoders", {}), "encoders")},
        aac_sample_rate=int(section.get("aac_sample_rate", base.aac_sample_rate)),
        aac_bitrate_kbps=int(section.get("aac_bitrate_kbps", base.aac_bitrate_kbps)),
        encoder_threads=int(section.get("encoder_threads", base.encoder_threads)),
        raw_queue_frames=int(section.get("raw_queue_frames", base.raw_queue_frames)),
        capture_video_format=str(section.get("capture_video_format", base.capture_video_format)),
        talk_output=talk_output,
        talk_wav_dir=Path(wav_dir) if wav_dir else state_root / "run" / "talk",
        talk_alsa_device=str(section.get("talk_alsa_device", base.talk_alsa_device)),
        talk_max_seconds=int(section.get("talk_max_seconds", base.talk_max_seconds)),
        hub=hub,
        backoff=backoff,
        upstream_timeout_s=float(section.get("upstream_timeout_s", base.upstream_timeout_s)),
    )


def _get(obj: Any, key: str) -> Any:
    """Settings are frozen dataclasses; accept mappings too (tests, JSON)."""
    if isinstance(obj, Mapping):
        return obj[key]
    return getattr(obj, key)


def stream_config(settings: Any, stream: str, media: MediaConfig) -> StreamConfig:
    """The effective configuration of one stream from the current settings and the media config."""
    v = _get(_get(settings, "video"), stream)
    codec = str(_get(v, "codec"))
    if codec not in VIDEO_CODECS:
        raise _err(f"video codec {codec!r} unsupported")
    video = VideoConfig(
        codec=codec,
        width=int(_get(v, "width")),
        height=int(_get(v, "height")),
        fps=int(_get(v, "fps")),
        bitrate_kbps=int(_get(v, "bitrate_kbps")),
        gop=int(_get(v, "gop")),
        encoder=media.encoders.get(codec, "libx264" if codec == "h264" else "libx265"),
        threads=media.encoder_threads,
    )
    if video.width % 2 or video.height % 2 or min(video.width, video.height, video.fps, video.gop) < 1:
        raise _err("video size must be even and positive; fps and gop positive")
    a = _get(settings, "audio")
    per_stream = _get(_get(a, "streams"), stream)
    audio: AudioConfig | None = None
    if bool(_get(per_stream, "enabled")):
        acodec = str(_get(per_stream, "codec"))
        if acodec not in AUDIO_CODECS:
            raise _err(f"audio codec {acodec!r} unsupported")
        inp = str(_get(a, "input"))
        if inp not in AUDIO_INPUTS:
            raise _err(f"audio input {inp!r} unsupported")
        if media.source == "synthetic":
            device = str(media.synthetic_tones.get(inp, 1000))
        else:
            device = media.audio_devices.get(inp, "default")
        audio = AudioConfig(
            codec=acodec,
            sample_rate=8000 if acodec in ("pcmu", "pcma") else media.aac_sample_rate,
            input=inp,
            device=device,
            gain_db=float(_get(a, "gain_db")),
            noise_filter=bool(_get(a, "noise_filter")),
            bitrate_kbps=media.aac_bitrate_kbps,
        )
    location = ""
    if media.source == "capture":
        location = media.video_devices.get(stream, "")
    elif media.source == "rtsp":
        location = media.upstream.get(stream, "")
    elif media.source == "file":
        location = media.files.get(stream, "")
    if media.source != "synthetic" and not location:
        raise _err(f"no {media.source} location configured for stream {stream}")
    return StreamConfig(
        stream=stream,
        source=media.source,
        video=video,
        audio=audio,
        location=location,
        raw_queue_frames=media.raw_queue_frames,
        capture_format=media.capture_video_format,
    )
