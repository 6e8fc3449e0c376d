"""Shared test helpers: in-process devices on real loopback ports, PKIs in tmp dirs."""

from __future__ import annotations

import datetime as dt
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from agent.audit.log import AuditLog
from agent.audit.record import AuditRecord
from agent.config import DeviceFacts
from agent.devicesecret import FileDeviceSecret
from agent.factory.device import FactoryDevice
from agent.factory.firmware import firmware_sha256
from agent.factory.server import FactoryServer, factory_ssl_context
from agent.identity.store import IdentityStore
from agent.state import StateDir
from provisioning import certs, pki

MODEL = "RC-1000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_pki(directory: Path, *, stations: tuple[str, ...] = ("station-1",)) -> Path:
    now = dt.datetime.now(dt.UTC)
    pki.init_pki(directory, policy=certs.Policy(oui="0A1B2C"), station=stations[0], now=now)
    for extra in stations[1:]:
        pki.add_station(directory, extra, pki.load_signer(directory), now)
    return directory


@dataclass
class InProcessDevice:
    state: StateDir
    secret: FileDeviceSecret
    audit: AuditLog
    device: FactoryDevice
    server: FactoryServer
    identity: IdentityStore
    events: list[AuditRecord]

    @property
    def port(self) -> int:
        return self.server.port

    def audited(self, event: str, outcome: str) -> list[AuditRecord]:
        return [r for r in self.events if r.event == event and r.outcome == outcome]


async def start_device(
    root: Path, factory_ca: Path, serial: str, *, mac: str = "", model: str = MODEL
) -> InProcessDevice:
    state = StateDir.open(root)
    secret = FileDeviceSecret(state.device_secret_file)
    audit = AuditLog(state.audit_dir, secret.derive("audit-mac"), clock=time.time)
    events: list[AuditRecord] = []
    audit.subscribe(events.append)
    facts = DeviceFacts(serial=serial, model=model, mac=mac)
    anchor = factory_ca.read_bytes()  # noqa: ASYNC240 - test setup, a few hundred bytes
    device = FactoryDevice(state, secret, facts, anchor, audit, time.time, firmware_sha256(state))
    identity = IdentityStore(state, secret, facts, time.time)

    async def on_locked() -> None:
        identity.reload()

    server = FactoryServer(device, factory_ssl_context(anchor, serial), "127.0.0.1", 0, on_locked=on_locked)
    await server.start()
    return InProcessDevice(state, secret, audit, device, server, identity, events)
