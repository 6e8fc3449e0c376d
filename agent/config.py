"""Agent configuration: command line + an optional JSON config file.

Limits live here, not in the code that enforces them. Capability-specific sections (``rtsp``,
``media``, ``ota``, ``factory`` ...) are passed through as mappings and parsed by their owners,
so a capability can grow options without touching the core.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ValidationError


@dataclass(frozen=True)
class Limits:
    max_json_body: int = 64 * 1024
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    argon2_concurrency: int = 2
    session_idle_s: float = 15 * 60
    session_absolute_s: float = 12 * 3600
    max_sessions_per_user: int = 32
    max_users: int = 64


@dataclass(frozen=True)
class DeviceFacts:
    """What the device says about itself. On hardware: read from OTP / the factory partition."""

    serial: str = ""
    model: str = "RC-1000"
    mac: str = ""
    firmware_version: str = "0.1.0"


@dataclass(frozen=True)
class AgentConfig:
    state_dir: Path
    bind: str = "0.0.0.0"  # noqa: S104 - a camera serves its LAN; the firewall narrows it
    https_port: int = 443
    rtsps_port: int = 322
    host_mode: bool = True
    factory_ca: Path | None = None
    factory_port: int | None = None
    device: DeviceFacts = field(default_factory=DeviceFacts)
    limits: Limits = field(default_factory=Limits)
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> Mapping[str, Any]:
        return self.sections.get(name, {})


_MAX_CONFIG_BYTES = 256 * 1024


def load_config_file(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ValidationError(f"config file larger than {_MAX_CONFIG_BYTES} bytes", code="config.too_large")
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise ValidationError(f"config file is not JSON: {exc}", code="config.invalid") from exc
    if not isinstance(obj, dict):
        raise ValidationError("config file must hold a JSON object", code="config.invalid")
    return obj


def build_config(
    state_dir: Path,
    file_values: Mapping[str, Any],
    *,
    https_port: int | None = None,
    rtsps_port: int | None = None,
    factory_ca: Path | None = None,
    factory_port: int | None = None,
    host_mode: bool = True,
) -> AgentConfig:
    core_keys = {"bind", "https_port", "rtsps_port", "device", "limits", "host_mode"}
    device_raw = file_values.get("device", {})
    limits_raw = file_values.get("limits", {})
    if not isinstance(device_raw, dict) or not isinstance(limits_raw, dict):
        raise ValidationError("device and limits must be objects", code="config.invalid")
    try:
        device = DeviceFacts(**device_raw)
        limits = Limits(**limits_raw)
    except TypeError as exc:
        raise ValidationError(f"unknown config key: {exc}", code="config.invalid") from exc
    sections = {k: v for k, v in file_values.items() if k not in core_keys and isinstance(v, dict)}
    return AgentConfig(
        state_dir=state_dir,
        bind=str(file_values.get("bind", "0.0.0.0")),  # noqa: S104
        https_port=https_port if https_port is not None else int(file_values.get("https_port", 443)),
        rtsps_port=rtsps_port if rtsps_port is not None else int(file_values.get("rtsps_port", 322)),
        host_mode=bool(file_values.get("host_mode", host_mode)),
        factory_ca=factory_ca,
        factory_port=factory_port,
        device=device,
        limits=limits,
        sections=sections,
    )
