"""The settings model and its field-by-field validation (pure).

``validate(doc)`` takes the whole JSON document and returns frozen dataclasses or raises
``ValidationError`` whose ``field`` is the dotted path of the first bad field. Unknown keys are
errors too (a typo must not be silently ignored on a security device).
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from agent.errors import ValidationError

VIDEO_CODECS = ("h264", "h265")
AUDIO_CODECS = ("pcmu", "pcma", "aac")
AUDIO_INPUTS = ("builtin_mic", "external_mic", "line_in")
STREAMS = ("main", "sub")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_HHMM_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class VideoStream:
    codec: str
    width: int
    height: int
    fps: int
    bitrate_kbps: int
    gop: int


@dataclass(frozen=True)
class AudioStream:
    enabled: bool
    codec: str


@dataclass(frozen=True)
class Audio:
    input: str
    gain_db: float
    noise_filter: bool
    streams: Mapping[str, AudioStream]


@dataclass(frozen=True)
class Network:
    https_port: int
    rtsps_port: int
    rtsp_plain_port: int | None
    outbound_allow: tuple[str, ...]


@dataclass(frozen=True)
class Time:
    ntp_server: str | None


@dataclass(frozen=True)
class Syslog:
    host: str | None
    port: int
    ca_pem: str | None
    server_name: str | None


@dataclass(frozen=True)
class Update:
    server_url: str | None
    pin_sha256: str | None
    auto: bool
    window_start: str
    window_end: str


@dataclass(frozen=True)
class Settings:
    video: Mapping[str, VideoStream]
    audio: Audio
    network: Network
    time: Time
    syslog: Syslog
    update: Update

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["network"]["outbound_allow"] = list(self.network.outbound_allow)
        return doc


DEFAULTS: dict[str, Any] = {
    "video": {
        "main": {"codec": "h264", "width": 1920, "height": 1080, "fps": 30, "bitrate_kbps": 4000, "gop": 60},
        "sub": {"codec": "h264", "width": 640, "height": 360, "fps": 15, "bitrate_kbps": 512, "gop": 30},
    },
    "audio": {
        "input": "external_mic",
        "gain_db": 0.0,
        "noise_filter": False,
        "streams": {"main": {"enabled": True, "codec": "aac"}, "sub": {"enabled": True, "codec": "pcmu"}},
    },
    "network": {"https_port": 443, "rtsps_port": 322, "rtsp_plain_port": None, "outbound_allow": []},
    "time": {"ntp_server": None},
    "syslog": {"host": None, "port": 6514, "ca_pem": None, "server_name": None},
    "update": {"server_url": None, "pin_sha256": None, "auto": False, "window_start": "02:00", "window_end": "04:00"},
}

# Which role may change which section: the settings part of the role x endpoint matrix.
SECTION_ROLES = {"video": "operator", "audio": "operator", "network": "admin", "time": "admin",
                 "syslog": "admin", "update": "admin"}

# (min, max) for integer fields; resolution limits follow H.264 level 5.1 / common sensors.
_VIDEO_LIMITS = {"width": (160, 3840), "height": (120, 2160), "fps": (1, 60),
                 "bitrate_kbps": (64, 20000), "gop": (1, 600)}


def _obj(doc: Any, path: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise ValidationError(f"{path} must be an object", code="settings.invalid", field=path)
    extra = set(doc) - keys
    if extra:
        bad = sorted(extra)[0]
        raise ValidationError(f"unknown field {path}.{bad}", code="settings.unknown_field", field=f"{path}.{bad}")
    missing = keys - set(doc)
    if missing:
        bad = sorted(missing)[0]
        raise ValidationError(f"missing field {path}.{bad}", code="settings.missing_field", field=f"{path}.{bad}")
    return doc


def _int(v: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValidationError(f"{path} must be an integer in {lo}..{hi}", code="settings.out_of_range", field=path)
    return v


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ValidationError(f"{path} must be true or false", code="settings.invalid", field=path)
    return v


def _choice(v: Any, path: str, options: tuple[str, ...]) -> str:
    if v not in options:
        raise ValidationError(f"{path} must be one of {', '.join(options)}", code="settings.invalid", field=path)
    return str(v)


def _host(v: Any, path: str) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            ipaddress.ip_address(v)
            return v
        except ValueError:
            if _HOST_RE.fullmatch(v):
                return v
    raise ValidationError(f"{path} must be a host name or IP address", code="settings.invalid", field=path)


def _video(doc: Any, path: str) -> VideoStream:
    d = _obj(doc, path, {"codec", "width", "height", "fps", "bitrate_kbps", "gop"})
    vals = {k: _int(d[k], f"{path}.{k}", *lim) for k, lim in _VIDEO_LIMITS.items()}
    for k in ("width", "height"):
        if vals[k] % 2:
            raise ValidationError(f"{path}.{k} must be even (4:2:0 video)", code="settings.invalid",
                                  field=f"{path}.{k}")
    return VideoStream(codec=_choice(d["codec"], f"{path}.codec", VIDEO_CODECS), **vals)


def _audio(doc: Any) -> Audio:
    d = _obj(doc, "audio", {"input", "gain_db", "noise_filter", "streams"})
    gain = d["gain_db"]
    if isinstance(gain, bool) or not isinstance(gain, int | float) or not -20.0 <= float(gain) <= 30.0:
        raise ValidationError("audio.gain_db must be a number in -20..30", code="settings.out_of_range",
                              field="audio.gain_db")
    streams_doc = _obj(d["streams"], "audio.streams", set(STREAMS))
    streams = {}
    for name in STREAMS:
        p = f"audio.streams.{name}"
        s = _obj(streams_doc[name], p, {"enabled", "codec"})
        streams[name] = AudioStream(_bool(s["enabled"], f"{p}.enabled"),
                                    _choice(s["codec"], f"{p}.codec", AUDIO_CODECS))
    return Audio(_choice(d["input"], "audio.input", AUDIO_INPUTS), float(gain),
                 _bool(d["noise_filter"], "audio.noise_filter"), streams)


def _network(doc: Any) -> Network:
    d = _obj(doc, "network", {"https_port", "rtsps_port", "rtsp_plain_port", "outbound_allow"})
    https = _int(d["https_port"], "network.https_port", 1, 65535)
    rtsps = _int(d["rtsps_port"], "network.rtsps_port", 1, 65535)
    plain = None if d["rtsp_plain_port"] is None else _int(d["rtsp_plain_port"], "network.rtsp_plain_port", 1, 65535)
    ports = [p for p in (https, rtsps, plain) if p is not None]
    if len(set(ports)) != len(ports):
        raise ValidationError("network ports must differ", code="settings.port_conflict", field="network.rtsps_port")
    allow = d["outbound_allow"]
    if not isinstance(allow, list) or len(allow) > 32:
        raise ValidationError("network.outbound_allow must be a list of at most 32 hosts", code="settings.invalid",
                              field="network.outbound_allow")
    hosts = tuple(str(_host(h, f"network.outbound_allow[{i}]")) for i, h in enumerate(allow))
    return Network(https, rtsps, plain, hosts)


def _syslog(doc: Any) -> Syslog:
    d = _obj(doc, "syslog", {"host", "port", "ca_pem", "server_name"})
    ca = d["ca_pem"]
    if ca is not None and (not isinstance(ca, str) or "-----BEGIN CERTIFICATE-----" not in ca or len(ca) > 64 * 1024):
        raise ValidationError("syslog.ca_pem must be PEM certificates (at most 64 KiB)", code="settings.invalid",
                              field="syslog.ca_pem")
    host = _host(d["host"], "syslog.host")
    if host is not None and ca is None:
        raise ValidationError("syslog.ca_pem is required: forwarding is TLS with a validated server",
                              code="settings.invalid", field="syslog.ca_pem")
    return Syslog(host, _int(d["port"], "syslog.port", 1, 65535), ca, _host(d["server_name"], "syslog.server_name"))


def _update(doc: Any) -> Update:
    d = _obj(doc, "update", {"server_url", "pin_sha256", "auto", "window_start", "window_end"})
    url = d["server_url"]
    if url is not None and (not isinstance(url, str) or not url.startswith("https://") or len(url) > 2048):
        raise ValidationError("update.server_url must be an https:// URL", code="settings.invalid",
                              field="update.server_url")
    pin = d["pin_sha256"]
    if pin is not None and (not isinstance(pin, str) or not _SHA256_RE.fullmatch(pin)):
        raise ValidationError("update.pin_sha256 must be 64 lowercase hex digits", code="settings.invalid",
                              field="update.pin_sha256")
    if url is not None and pin is None:
        raise ValidationError("update.pin_sha256 is required with a server (certificate pinning)",
                              code="settings.invalid", field="update.pin_sha256")
    for k in ("window_start", "window_end"):
        if not isinstance(d[k], str) or not _HHMM_RE.fullmatch(d[k]):
            raise ValidationError(f"update.{k} must be HH:MM", code="settings.invalid", field=f"update.{k}")
    return Update(url, pin, _bool(d["auto"], "update.auto"), d["window_start"], d["window_end"])


def validate(doc: Any) -> Settings:
    d = _obj(doc, "settings", set(DEFAULTS))
    video_doc = _obj(d["video"], "video", set(STREAMS))
    time_doc = _obj(d["time"], "time", {"ntp_server"})
    return Settings(
        video={name: _video(video_doc[name], f"video.{name}") for name in STREAMS},
        audio=_audio(d["audio"]),
        network=_network(d["network"]),
        time=Time(_host(time_doc["ntp_server"], "time.ntp_server")),
        syslog=_syslog(d["syslog"]),
        update=_update(d["update"]),
    )


def merge(base: Mapping[str, Any], patch: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """JSON merge of ``patch`` into ``base`` (RFC 7396 style, but null is a value, not a delete)."""
    if not isinstance(patch, Mapping):
        raise ValidationError(f"{path or 'body'} must be an object", code="settings.invalid", field=path or None)
    out = copy.deepcopy(dict(base))
    for k, v in patch.items():
        sub = f"{path}.{k}" if path else str(k)
        if k not in out:
            raise ValidationError(f"unknown field {sub}", code="settings.unknown_field", field=sub)
        if isinstance(v, Mapping) and isinstance(out[k], Mapping):
            out[k] = merge(out[k], v, sub)
        else:
            out[k] = v
    return out
