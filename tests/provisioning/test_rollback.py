"""A device that comes back with new keys (factory reset, or a crash before its keys were stored):
the certificates issued for the old keys are revoked, never left live beside the new ones."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent.factory import is_factory_state
from agent.factory import protocol as p
from agent.factory.reset import factory_reset
from agent.identity import provisioned
from provisioning import certs
from provisioning.client import DeviceClient
from provisioning.db import CertRow, SqliteRepository
from provisioning.pki import StationPki
from provisioning.station import Job, Station
from tests.provisioning.helpers import MODEL, start_device


async def test_rekeyed_device_revokes_old_certificates(tmp_path: Path, shared_pki: Path) -> None:
    serial = "RB0000001"
    repo = SqliteRepository(tmp_path / "f.db")
    station = Station(StationPki.load(shared_pki, "station-1"), repo)
    dev = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", serial)
    # A station that got as far as issuing and then died.
    async with DeviceClient("127.0.0.1", dev.port, station.pki.client_ssl_context()) as c:
        info = await c.info()
        repo.claim_device(serial, info.mac, MODEL, "station-1", "op", 1.0, 0.0)
        csrs = await c.keys(serial)
    now = dt.datetime.now(dt.UTC)
    old = []
    for kind in p.KEY_KINDS:
        csr = certs.check_csr(csrs[kind], kind, serial)
        cert = (
            certs.idevid_certificate(
                station.pki.signer, station.pki.issuing, csr, serial, MODEL, station.pki.policy, now
            )
            if kind == "idevid"
            else certs.tls_certificate(station.pki.signer, station.pki.issuing, csr, serial, station.pki.policy, now)
        )
        repo.replace_cert(
            CertRow(
                format(cert.serial_number, "x"),
                serial,
                kind,
                p.cert_fingerprint(cert),
                p.key_fingerprint(p.ec_public_key(csr.public_key(), kind)),
                "x",
                "PEM",
                "issued",
            ),
            "station-1",
            2.0,
        )
        old.append(p.cert_fingerprint(cert))
    # The device is factory reset: its pending keys are gone, the audit log keeps the record.
    await dev.server.stop()
    wiped = factory_reset(dev.state, dev.audit, actor="technician", source="console")
    assert "identity" in wiped
    assert dev.audited("factory.reset", "success")
    dev2 = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", serial)
    assert is_factory_state(dev2.state)
    out = await station.provision(Job(serial, MODEL), "127.0.0.1", dev2.port, tmp_path / "labels")
    assert out.status == "locked"
    record = provisioned.load(dev2.state)
    assert record is not None
    statuses = {c.fingerprint: c.status for c in repo.all_certs()}
    assert all(statuses[fp] == "revoked" for fp in old)
    assert statuses[p.cert_fingerprint(record.idevid_certificate())] == "active"
    assert sum(1 for s in statuses.values() if s == "active") == 2
    repo.close()


async def test_factory_reset_returns_a_locked_device_to_factory_state(tmp_path: Path, shared_pki: Path) -> None:
    repo = SqliteRepository(tmp_path / "f.db")
    station = Station(StationPki.load(shared_pki, "station-1"), repo)
    dev = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "RB0000002")
    await station.provision(Job("RB0000002", MODEL), "127.0.0.1", dev.port, tmp_path / "labels")
    assert not is_factory_state(dev.state)
    factory_reset(dev.state, dev.audit, actor=None, source="button")
    assert provisioned.load(dev.state) is None
    assert not dev.state.claim_file.exists()
    assert [e.event for e in dev.events][-2:] == ["factory.reset", "factory.reset"]
    assert any(dev.state.audit_dir.iterdir())  # the log survived the wipe
    dev2 = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "RB0000002")
    assert is_factory_state(dev2.state)
    repo.close()


async def test_factory_reset_cli(tmp_path: Path, shared_pki: Path) -> None:
    import argparse

    from agent.errors import ValidationError
    from agent.factory.cli import register_cli

    repo = SqliteRepository(tmp_path / "f.db")
    station = Station(StationPki.load(shared_pki, "station-1"), repo)
    dev = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "RB0000003")
    await station.provision(Job("RB0000003", MODEL), "127.0.0.1", dev.port, tmp_path / "labels")
    repo.close()
    dev.audit.close()
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["factory-reset", "--state-dir", str(tmp_path / "dev")])
    with pytest.raises(ValidationError) as err:
        args.func(args)
    assert err.value.code == "factory.reset_unconfirmed"
    assert provisioned.load(dev.state) is not None
    args = parser.parse_args(["factory-reset", "--state-dir", str(tmp_path / "dev"), "--yes"])
    assert args.func(args) == 0
    assert provisioned.load(dev.state) is None
    dev2 = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "RB0000003")
    assert is_factory_state(dev2.state)
