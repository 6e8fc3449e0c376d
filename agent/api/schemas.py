"""JSON Schemas of the core request bodies (documentation and fuzzing input; the handlers
validate on their own and answer 4xx naming the field)."""

from __future__ import annotations

from typing import Any

_STR = {"type": "string", "maxLength": 256}
_PASSWORD = {"type": "string", "minLength": 12, "maxLength": 128}
_ROLE = {"type": "string", "enum": ["admin", "operator", "viewer"]}
_USERNAME = {"type": "string", "pattern": "^[a-z][a-z0-9._-]{2,31}$"}

CLAIM: dict[str, Any] = {
    "type": "object",
    "required": ["setup_code", "username", "password"],
    "properties": {"setup_code": _STR, "username": _USERNAME, "password": _PASSWORD},
}
LOGIN: dict[str, Any] = {
    "type": "object",
    "required": ["username", "password"],
    "properties": {"username": {"type": "string", "maxLength": 64}, "password": _STR},
}
CHANGE_PASSWORD: dict[str, Any] = {
    "type": "object",
    "required": ["current_password", "new_password"],
    "properties": {"current_password": _STR, "new_password": _PASSWORD},
}
CREATE_USER: dict[str, Any] = {
    "type": "object",
    "required": ["username", "password", "role"],
    "properties": {"username": _USERNAME, "password": _PASSWORD, "role": _ROLE},
}
UPDATE_USER: dict[str, Any] = {
    "type": "object",
    "properties": {"password": _PASSWORD, "role": _ROLE},
    "additionalProperties": False,
}
_VIDEO = {
    "type": "object",
    "properties": {
        "codec": {"type": "string", "enum": ["h264", "h265"]},
        "width": {"type": "integer", "minimum": 160, "maximum": 3840},
        "height": {"type": "integer", "minimum": 120, "maximum": 2160},
        "fps": {"type": "integer", "minimum": 1, "maximum": 60},
        "bitrate_kbps": {"type": "integer", "minimum": 64, "maximum": 20000},
        "gop": {"type": "integer", "minimum": 1, "maximum": 600},
    },
    "additionalProperties": False,
}
_AUDIO_STREAM = {
    "type": "object",
    "properties": {"enabled": {"type": "boolean"}, "codec": {"type": "string", "enum": ["pcmu", "pcma", "aac"]}},
    "additionalProperties": False,
}
SECTIONS: dict[str, dict[str, Any]] = {
    "video": {"type": "object", "properties": {"main": _VIDEO, "sub": _VIDEO}, "additionalProperties": False},
    "audio": {
        "type": "object",
        "properties": {
            "input": {"type": "string", "enum": ["builtin_mic", "external_mic", "line_in"]},
            "gain_db": {"type": "number", "minimum": -20, "maximum": 30},
            "noise_filter": {"type": "boolean"},
            "streams": {"type": "object", "properties": {"main": _AUDIO_STREAM, "sub": _AUDIO_STREAM},
                        "additionalProperties": False},
        },
        "additionalProperties": False,
    },
    "network": {
        "type": "object",
        "properties": {
            "https_port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "rtsps_port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "rtsp_plain_port": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
            "outbound_allow": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
        },
        "additionalProperties": False,
    },
    "time": {"type": "object", "properties": {"ntp_server": {"type": ["string", "null"]}},
             "additionalProperties": False},
    "syslog": {
        "type": "object",
        "properties": {
            "host": {"type": ["string", "null"]},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "ca_pem": {"type": ["string", "null"]},
            "server_name": {"type": ["string", "null"]},
        },
        "additionalProperties": False,
    },
    "update": {
        "type": "object",
        "properties": {
            "server_url": {"type": ["string", "null"]},
            "pin_sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
            "auto": {"type": "boolean"},
            "window_start": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
            "window_end": {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"},
        },
        "additionalProperties": False,
    },
}
ALL_SETTINGS: dict[str, Any] = {"type": "object", "properties": SECTIONS, "additionalProperties": False}
