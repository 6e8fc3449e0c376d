"""RTSP limits and timeouts. They live here (and in the ``rtsp`` config section), not in the code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from agent.errors import ValidationError


@dataclass(frozen=True)
class RtspConfig:
    max_request_line: int = 2048
    max_header_bytes: int = 8 * 1024
    max_headers: int = 48
    max_body: int = 16 * 1024
    # interleaved frames from clients: RTCP receiver reports and backchannel audio only
    max_interleaved: int = 4096
    session_timeout_s: int = 60
    nonce_lifetime_s: int = 300
    replay_cache_size: int = 4096
    # slowloris: a request must be complete this long after its first byte
    request_deadline_s: float = 10.0
    # idle connection without a session is closed after this
    idle_timeout_s: float = 30.0
    tls_handshake_timeout_s: float = 10.0
    max_connections: int = 1024
    max_auth_failures_per_connection: int = 5
    # slow clients: above ``client_buffer_bytes`` queued the client skips to the next keyframe;
    # if it is still above the limit after ``slow_client_drop_s`` it is disconnected.
    client_buffer_bytes: int = 4 * 1024 * 1024
    slow_client_drop_s: float = 5.0
    # kernel send buffer per client. Bounded instead of autotuned (up to 4 MiB per socket on
    # Linux): keeps memory per client predictable and makes a stalled reader visible to the
    # slow-client logic within a second or two instead of after megabytes.
    socket_send_buffer: int = 256 * 1024
    # largest RTP packet payload (well under the 64 KiB interleaved limit, near an Ethernet MTU so
    # RTSP-to-UDP relays downstream do not fragment)
    rtp_mtu: int = 1400
    rtcp_interval_s: float = 5.0
    # talk lock released after this much backchannel silence
    talk_silence_s: float = 10.0
    max_gop_bytes: int = 8 * 1024 * 1024
    # keep stream pumps running this long after the last client left
    pump_linger_s: float = 30.0
    first_keyframe_wait_s: float = 5.0

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> RtspConfig:
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key not in known:
                raise ValidationError(f"unknown rtsp config key {key!r}", code="config.invalid")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValidationError(f"rtsp.{key} must be a positive number", code="config.invalid")
            values[key] = value
        return cls(**values)
