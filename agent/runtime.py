"""Building the services and running the agent's single event loop (HTTPS + RTSPS + workers)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from agent import capabilities as capability_list
from agent.app import create_app
from agent.audit.limits import AuditLimits
from agent.audit.log import AuditLog
from agent.auth import claim
from agent.auth.hashing import AsyncHasher
from agent.auth.sessions import SessionStore
from agent.auth.users import UserStore
from agent.config import AgentConfig
from agent.devicesecret import FileDeviceSecret, host_serial
from agent.identity.store import IdentityStore
from agent.services import Services
from agent.settings.store import SettingsStore
from agent.state import StateDir, atomic_write

log = logging.getLogger("camera-agent")


def _host_facts(config: AgentConfig, state: StateDir, secret: FileDeviceSecret) -> AgentConfig:
    """The device's serial and MAC: from the factory identity once provisioned; else configured;
    else (host mode) a stable serial and a locally administered MAC derived from the device
    secret, so each state dir is its own device."""
    from agent.identity import provisioned

    dev = config.device
    record = provisioned.load(state)
    if record is not None:
        return replace(config, device=replace(dev, serial=record.serial, mac=record.mac))
    if not dev.serial:
        dev = replace(dev, serial=host_serial(secret))
    if not dev.mac:
        raw = bytearray(secret.derive("host-mac", 6))
        raw[0] = (raw[0] & 0xFC) | 0x02
        dev = replace(dev, mac=":".join(f"{b:02x}" for b in raw))
    return replace(config, device=dev)


def build_services(config: AgentConfig) -> Services:
    state = StateDir.open(config.state_dir)
    otp_path = config.section("otp").get("path")
    secret = FileDeviceSecret(state.device_secret_file if otp_path is None else Path(otp_path))
    config = _host_facts(config, state, secret)
    clock = time.time
    audit_cfg = config.section("audit")
    audit = AuditLog(state.audit_dir, secret.derive("audit-mac"), clock=clock,
                     max_segment_bytes=int(audit_cfg.get("max_segment_bytes", 1 << 20)),
                     max_segments=int(audit_cfg.get("max_segments", 8)),
                     limits=AuditLimits.from_section(audit_cfg))
    hasher = AsyncHasher(concurrency=config.limits.argon2_concurrency)
    users = UserStore(state, secret, hasher, clock, context_words=(config.device.serial, config.device.model),
                      max_users=config.limits.max_users)
    sessions = SessionStore(clock, idle_s=config.limits.session_idle_s, absolute_s=config.limits.session_absolute_s,
                            max_per_user=config.limits.max_sessions_per_user)
    settings = SettingsStore(state, overrides={"network": {"https_port": config.https_port,
                                                           "rtsps_port": config.rtsps_port}})
    identity = IdentityStore(state, secret, config.device, clock)
    return Services(config=config, state=state, secret=secret, audit=audit, users=users, sessions=sessions,
                    settings=settings, identity=identity, clock=clock)


def _announce(svc: Services, new_code: str | None) -> None:
    cfg = svc.config
    host = "127.0.0.1" if cfg.bind in ("0.0.0.0", "::") else cfg.bind  # noqa: S104
    ca_copy = svc.state.root / "device-ca.pem"
    atomic_write(ca_copy, svc.identity.trust_anchor_pem(), 0o644)
    lines = [
        f"camera-agent: serial {cfg.device.serial}, model {cfg.device.model}",
        f"  HTTPS API:  https://{host}:{cfg.https_port}/api/v1/  (trust {ca_copy})",
        f"  RTSPS:      rtsps://{host}:{cfg.rtsps_port}/main  and  /sub",
    ]
    state = claim.load(svc.state)
    if not state.claimed:
        if svc.state.setup_code_file.exists():
            code = new_code or svc.state.setup_code_file.read_text().strip()
            lines.append(f"  UNCLAIMED: setup code {code} (also in {svc.state.setup_code_file}, mode 0600)")
            lines.append("  claim:  POST /api/v1/claim {\"setup_code\", \"username\", \"password\"}")
        else:
            lines.append("  UNCLAIMED: use the setup code on the device label")
    print("\n".join(lines), flush=True)


async def serve(config: AgentConfig) -> None:
    # Handlers first: a SIGTERM that lands while the listener or the media capabilities are
    # still starting must still end in a graceful stop (agent.stop recorded, exit 0), not -15.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    svc = build_services(config)
    new_code = None
    if config.factory_ca is None and not claim.load(svc.state).claimed:
        new_code = claim.ensure_host_setup_code(svc.state, svc.secret)
    ssl_ctx = svc.identity.server_ssl_context()
    caps = capability_list.hold_back(capability_list.load(svc))
    app = create_app(svc, caps)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, svc.config.bind, svc.config.https_port, ssl_context=ssl_ctx, backlog=512)
    await site.start()
    print(f"camera-agent: HTTPS listening on {svc.config.https_port}", flush=True)
    # Media and RTSPS follow the listener; the announcement (and device-ca.pem, which test
    # harnesses wait for) comes after them, so "announced" still means every service is up.
    await capability_list.release_held(caps)
    await svc.audit.record("agent.start", outcome="info", details={"version": svc.config.device.firmware_version})
    _announce(svc, new_code)
    try:
        await stop.wait()
    finally:
        await svc.audit.record("agent.stop", outcome="info")
        await runner.cleanup()
        svc.audit.close()


def run(config: AgentConfig, *, boot_gate_fd: int | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if boot_gate_fd is not None:
        # Everything up to here touched only the verified rootfs; the state directory and the
        # sockets wait for the boot stage's verdict.
        from agent import bootgate

        capability_list.preload()
        print("camera-agent: modules loaded, waiting for the boot stage", flush=True)
        bootgate.wait(boot_gate_fd)
    asyncio.run(serve(config))
    return 0
