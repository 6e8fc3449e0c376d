"""End to end with the real factory server on loopback and the real station client."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest

from agent.auth import claim
from agent.factory import is_factory_state
from agent.identity import provisioned
from provisioning.db import SqliteRepository
from provisioning.pki import StationPki
from provisioning.station import Job, Station
from provisioning.verify import verify_device
from tests.provisioning.helpers import MODEL, start_device


async def test_provision_one_device(tmp_path: Path, shared_pki: Path) -> None:
    dev = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "SN0000001")
    assert is_factory_state(dev.state)
    repo = SqliteRepository(tmp_path / "factory.db")
    station = Station(StationPki.load(shared_pki, "station-1"), repo)
    out = await station.provision(Job("SN0000001", MODEL), "127.0.0.1", dev.port, tmp_path / "labels")
    assert out.status == "locked"
    assert not is_factory_state(dev.state)
    record = provisioned.load(dev.state)
    assert record is not None and record.serial == "SN0000001"
    # The label holds the code; the device holds a hash that accepts exactly that code.
    job = json.loads((tmp_path / "labels" / "SN0000001.json").read_bytes())
    claim.check_code(dev.state, dev.secret, job["setup_code"])
    with pytest.raises(claim.ClaimError):
        claim.check_code(dev.state, dev.secret, claim.generate_setup_code())
    # The factory port is gone.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", dev.port)
    rows = repo.export()
    assert [r["serial"] for r in rows] == ["SN0000001"]
    assert rows[0]["idevid_sha256"] == out.certificates["idevid"]
    # HTTPS now presents the factory chain: a client trusting only the factory CA validates it by name.
    ctx = dev.identity.server_ssl_context()
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    report = await asyncio.to_thread(
        verify_device,
        "127.0.0.1",
        port,
        shared_pki / "root-ca.pem",
        "SN0000001",
        __import__("datetime").datetime.now(__import__("datetime").UTC),
    )
    assert report["serial"] == "SN0000001"
    client = ssl.create_default_context(cafile=str(shared_pki / "root-ca.pem"))
    _, w = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="cam-sn0000001.local")
    w.close()
    server.close()
    repo.close()
