"""kill -9 of the station or the device at every step: the next run completes, and there is never
two identities for one serial nor one identity on two serials."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path

import pytest

from agent.auth import claim
from agent.devicesecret import FileDeviceSecret
from agent.factory import is_factory_state
from agent.factory import protocol as p
from agent.identity import provisioned
from agent.state import StateDir
from provisioning.db import SqliteRepository
from provisioning.verify import verify_device
from tests.provisioning.procs import DeviceProcess, provision_cli

STATION_POINTS = [
    "station.claimed",
    "station.keys",
    "station.issued",
    "station.installed",
    "station.proven",
    "station.label",
    "station.setup_code",
    "station.lock_sent",
]
DEVICE_POINTS = [
    "device.keys",
    "device.certificates",
    "device.challenge",
    "device.setup_code",
    "device.lock_committed",
    "device.lock",
]


def _device_args(pki: Path, db: Path, serial: str, labels: Path, dev: DeviceProcess) -> list[str]:
    return [
        "device",
        "--pki",
        str(pki),
        "--db",
        str(db),
        "--station",
        "station-1",
        "--serial",
        serial,
        "--model",
        "RC-1000",
        "--label-dir",
        str(labels),
        "--https-port",
        str(dev.https_port),
        f"127.0.0.1:{dev.factory_port}",
    ]


def _check_invariants(pki: Path, db: Path, serial: str, labels: Path, dev: DeviceProcess) -> None:
    state = StateDir(dev.state_dir.resolve())
    record = provisioned.load(state)
    assert record is not None and record.serial == serial
    assert not is_factory_state(state)
    repo = SqliteRepository(db)
    try:
        rows = [d for d in repo.all_devices() if d.serial == serial]
        assert len(rows) == 1 and rows[0].status == "locked"
        live = {c.kind: c for c in repo.live_certs(serial)}
        assert set(live) == {"idevid", "tls"} and {c.status for c in live.values()} == {"active"}
        assert live["idevid"].fingerprint == p.cert_fingerprint(record.idevid_certificate())
        assert live["tls"].fingerprint == p.cert_fingerprint(record.tls_certificate())
        # Any certificate from an abandoned attempt is revoked and is not what the device holds.
        for cert in repo.all_certs():
            if cert.status == "revoked":
                assert cert.fingerprint not in {live["idevid"].fingerprint, live["tls"].fingerprint}
            assert cert.device_serial == serial
    finally:
        repo.close()
    code = json.loads((labels / f"{serial}.json").read_bytes())["setup_code"]
    claim.check_code(state, FileDeviceSecret(state.device_secret_file), code)
    report = verify_device("127.0.0.1", dev.https_port, pki / "root-ca.pem", serial, dt.datetime.now(dt.UTC))
    assert report["serial"] == serial


@pytest.mark.slow
@pytest.mark.parametrize("point", STATION_POINTS)
def test_station_killed(point: str, tmp_path: Path, shared_pki: Path) -> None:
    serial = "K" + format(abs(hash(point)) % 10**9, "09d")
    dev = DeviceProcess(tmp_path / "dev", shared_pki / "root-ca.pem", serial)
    dev.start()
    db, labels = tmp_path / "f.db", tmp_path / "labels"
    try:
        rc, out = provision_cli(_device_args(shared_pki, db, serial, labels, dev), fault=point)
        assert rc == -signal.SIGKILL, out
        rc, out = provision_cli(_device_args(shared_pki, db, serial, labels, dev))
        assert rc == 0, out
        assert out["status"] == "locked"
        _check_invariants(shared_pki, db, serial, labels, dev)
    finally:
        dev.stop()


@pytest.mark.slow
@pytest.mark.parametrize("point", DEVICE_POINTS)
def test_device_killed(point: str, tmp_path: Path, shared_pki: Path) -> None:
    serial = "D" + format(abs(hash(point)) % 10**9, "09d")
    dev = DeviceProcess(tmp_path / "dev", shared_pki / "root-ca.pem", serial)
    dev.start(fault=point)
    db, labels = tmp_path / "f.db", tmp_path / "labels"
    try:
        rc, out = provision_cli(_device_args(shared_pki, db, serial, labels, dev))
        assert rc != 0, out
        assert dev.wait_dead() == -signal.SIGKILL
        dev.start()  # same state dir, same ports: the device comes back
        rc, out = provision_cli(_device_args(shared_pki, db, serial, labels, dev))
        assert rc == 0, out
        _check_invariants(shared_pki, db, serial, labels, dev)
        # And once locked, the factory endpoint never comes back after a restart.
        dev.stop()
        dev.start()
        rc, out = provision_cli(_device_args(shared_pki, db, serial, labels, dev))
        assert rc == 2 and out["error"] == "provision.duplicate_serial", out
        import socket

        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", dev.factory_port), timeout=2):
            pass
    finally:
        dev.stop()
