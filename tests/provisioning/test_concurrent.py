"""50 host-mode devices provisioned concurrently by 2 stations sharing one PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg
import pytest
from cryptography import x509

from agent.auth import claim
from agent.identity import provisioned
from provisioning.db import PostgresRepository
from provisioning.pki import StationPki
from provisioning.station import Job, Station
from tests.provisioning.helpers import MODEL, start_device

N = 50


@pytest.mark.slow
async def test_fifty_devices_two_stations_one_postgres(tmp_path: Path, shared_pki: Path, pg_db: str) -> None:
    devices = await asyncio.gather(
        *[start_device(tmp_path / f"dev{i}", shared_pki / "root-ca.pem", f"SN{i:08d}") for i in range(N)]
    )
    repos = [PostgresRepository(pg_db), PostgresRepository(pg_db)]
    stations = [Station(StationPki.load(shared_pki, f"station-{k + 1}"), repos[k]) for k in range(2)]
    labels = tmp_path / "labels"

    async def run(i: int) -> object:
        # Devices alternate between the two stations; both write to the one line database.
        first = stations[i % 2]
        return await first.provision(Job(f"SN{i:08d}", MODEL), "127.0.0.1", devices[i].port, labels)

    outcomes = await asyncio.gather(*[run(i) for i in range(N)])
    assert all(o.status == "locked" for o in outcomes)  # type: ignore[attr-defined]

    # Every key, certificate and setup code unique; each device holds what the database says.
    records = [provisioned.load(d.state) for d in devices]
    assert all(r is not None for r in records)
    idevids = [r.idevid_certificate() for r in records if r]
    tls = [r.tls_certificate() for r in records if r]
    keys = {_fp_key(c) for c in idevids + tls}
    assert len(keys) == 2 * N
    assert len({c.serial_number for c in idevids + tls}) == 2 * N
    codes = {json.loads((labels / f"SN{i:08d}.json").read_bytes())["setup_code"] for i in range(N)}
    assert len(codes) == N
    hashes = {claim.load(d.state).code_hash for d in devices}
    assert len(hashes) == N and None not in hashes
    for i, d in enumerate(devices):
        code = json.loads((labels / f"SN{i:08d}.json").read_bytes())["setup_code"]
        claim.check_code(d.state, d.secret, code)

    # Database consistent: one locked row per device, two active certificates each, matching.
    export = {row["serial"]: row for row in repos[0].export()}
    assert len(export) == N
    for r in records:
        assert r is not None
        row = export[r.serial]
        assert row["idevid_sha256"] == _fp(r.idevid_certificate())
        assert row["tls_sha256"] == _fp(r.tls_certificate())
        assert row["mac"] == r.mac
    stations_used = {row["station"] for row in export.values()}
    assert stations_used == {"station-1", "station-2"}
    with psycopg.connect(pg_db) as conn:
        assert conn.execute("SELECT count(*) FROM certificates WHERE status = 'active'").fetchone() == (2 * N,)
        assert conn.execute("SELECT count(*) FROM devices WHERE status = 'locked'").fetchone() == (N,)
    for repo in repos:
        repo.close()


def _fp_key(cert: x509.Certificate) -> str:
    from agent.factory.protocol import ec_public_key, key_fingerprint

    return key_fingerprint(ec_public_key(cert.public_key(), "test"))


def _fp(cert: x509.Certificate) -> str:
    from agent.factory.protocol import cert_fingerprint

    return cert_fingerprint(cert)
