"""The ``ota`` config section and building an ``Installer`` from it.

    "ota": {
      "keyring": "/etc/camera/ota-keyring.pem",     release root(s); --keyring overrides
      "compatible": "RC-1000",                      default: device.model
      "attempts": 3,                                boot attempts before fallback
      "allow_version_downgrade": false,             security version is enforced regardless
      "max_bundle_bytes": 2147483648,               default: limits.max_upload_bytes
      "min_signers": 1, "require_crl": false,
      "slots": {"type": "file"} | {"type": "device", "A": "/dev/vda2", "B": "/dev/vda3"},
      "env": {"primary": PATH, "redundant": PATH, "size": 16384, "primary_offset": 0,
              "redundant_offset": 0},            default: <ota_dir>/uboot.env(.redund)
      "booted": "file" | "cmdline",                 default: file in host mode
      "pull": {"timeout_s": 60, "retries": 5, "backoff_s": 2.0, "max_backoff_s": 300}
    }
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig
from agent.ota.antirollback import FileRollbackIndex, RollbackIndexStore, RootRaisedRollbackIndex
from agent.ota.bootchooser import UBootEnvChooser
from agent.ota.errors import OtaError
from agent.ota.installer import AuditFn, Installer, InstallPolicy
from agent.ota.slots import BootedSlotSource, CmdlineBootedSlot, DeviceSlots, FileBootedSlot, FileSlots, SlotStore
from agent.ota.ubootenv import DEFAULT_ENV_SIZE, EnvLocation, UBootEnv
from agent.state import StateDir
from bootverify.bundle.limits import BundleLimits
from bootverify.errors import BootVerifyError

if TYPE_CHECKING:
    from bootverify.bundle.cms import Keyring

MAX_KEYRING_BYTES = 256 * 1024


@dataclass(frozen=True)
class PullConfig:
    timeout_s: float = 60.0
    retries: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 300.0


def _int(section: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = section.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise OtaError(f"ota.{key} must be an integer in {lo}..{hi}", code="ota.config")
    return value


def load_keyring(path: Path) -> Keyring:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_KEYRING_BYTES + 1)
    except OSError as exc:
        raise OtaError(f"cannot read keyring {path}: {exc.strerror}", code="ota.no_keyring", status=503) from exc
    if len(raw) > MAX_KEYRING_BYTES:
        raise OtaError("keyring too large", code="ota.keyring_invalid")
    from bootverify.bundle.cms import Keyring  # the CMS chain loads with the first update

    try:
        return Keyring.from_pem(raw)
    except BootVerifyError as exc:
        raise OtaError(exc.message, code="ota.keyring_invalid") from exc


def _rollback_index(config: AgentConfig, state: StateDir, section: Mapping[str, Any]) -> RollbackIndexStore:
    """Host mode: the agent's own counter file. The board (``--root-requests``): root's file,
    raised by init on request (bootverify.boot.otp)."""
    fifo = config.section("board").get("root_requests")
    if not fifo:
        return FileRollbackIndex(state.otp_dir)
    return RootRaisedRollbackIndex(state.otp_dir, Path(str(fifo)),
                                   timeout_s=_int(section, "counter_raise_timeout_s", 120, 1, 3600))


def pull_config(config: AgentConfig) -> PullConfig:
    raw = config.section("ota").get("pull", {})
    if not isinstance(raw, dict):
        raise OtaError("ota.pull must be an object", code="ota.config")
    try:
        return PullConfig(**raw)
    except TypeError as exc:
        raise OtaError(f"unknown ota.pull key: {exc}", code="ota.config") from exc


def build_installer(
    config: AgentConfig,
    state: StateDir,
    audit: AuditFn,
    *,
    keyring_path: Path | None = None,
    now: Callable[[], dt.datetime] | None = None,
) -> Installer:
    section = config.section("ota")
    ota_dir = state.ota_dir
    kr = keyring_path or (Path(section["keyring"]) if section.get("keyring") else None)

    def keyring() -> Keyring:
        if kr is None:
            # 503: the device cannot take updates until it is configured; not a server fault.
            raise OtaError("no OTA keyring configured (ota.keyring or --keyring)", code="ota.no_keyring",
                           status=503)
        return load_keyring(kr)

    slots_cfg = section.get("slots", {"type": "file"})
    slots: SlotStore
    if slots_cfg.get("type", "file") == "file":
        slots = FileSlots(ota_dir)
    elif slots_cfg.get("type") == "device":
        devices: dict[str, dict[str, Path]] = {}
        for slot in ("A", "B"):
            spec = slots_cfg.get(slot)
            if isinstance(spec, str):
                devices[slot] = {"rootfs": Path(spec)}
            elif isinstance(spec, dict) and all(isinstance(v, str) for v in spec.values()):
                devices[slot] = {k: Path(v) for k, v in spec.items()}
            else:
                raise OtaError(f"ota.slots.{slot} must be a path or {{class: path}}", code="ota.config")
        slots = DeviceSlots(devices)
    else:
        raise OtaError("ota.slots.type must be file or device", code="ota.config")

    env_cfg = section.get("env", {})
    primary = EnvLocation(Path(env_cfg.get("primary", ota_dir / "uboot.env")), int(env_cfg.get("primary_offset", 0)))
    red_path = env_cfg.get("redundant", ota_dir / "uboot.env.redund")
    redundant = EnvLocation(Path(red_path), int(env_cfg.get("redundant_offset", 0))) if red_path else None
    env = UBootEnv(primary, redundant, int(env_cfg.get("size", DEFAULT_ENV_SIZE)))

    booted: BootedSlotSource
    mode = section.get("booted", "file" if config.host_mode else "cmdline")
    booted = FileBootedSlot(ota_dir) if mode == "file" else CmdlineBootedSlot()

    limits = BundleLimits(
        max_bundle_bytes=_int(section, "max_bundle_bytes", config.limits.max_upload_bytes, 1 << 16, 1 << 40),
        min_signers=_int(section, "min_signers", 1, 1, 4),
        require_crl=bool(section.get("require_crl", False)),
    )
    classes = section.get("slot_classes", ["rootfs"])
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise OtaError("ota.slot_classes must be a non-empty list of names", code="ota.config")
    policy = InstallPolicy(
        slot_classes=tuple(classes),
        compatible=str(section.get("compatible", config.device.model)),
        attempts=_int(section, "attempts", 3, 1, 9),
        allow_version_downgrade=bool(section.get("allow_version_downgrade", False)),
        limits=limits,
    )
    return Installer(
        ota_dir=ota_dir, keyring=keyring, slots=slots, chooser=UBootEnvChooser(env), booted=booted,
        rollback=_rollback_index(config, state, section), policy=policy,
        factory_version=config.device.firmware_version, audit=audit,
        now=now or (lambda: dt.datetime.now(dt.UTC)),
    )
