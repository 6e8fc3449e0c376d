"""The repository interface against SQLite and a real PostgreSQL: same behaviour, same constraints."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.db import CertRow, Repository, SqliteRepository, open_repository
from provisioning.errors import JobRefused


@pytest.fixture(params=["sqlite", "postgresql"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    if request.param == "sqlite":
        r: Repository = open_repository(f"sqlite:///{tmp_path / 'f.db'}")
    else:
        r = open_repository(request.getfixturevalue("pg_db"))
    yield r
    r.close()


def _cert(serial: str, kind: str, n: int) -> CertRow:
    return CertRow(f"{n:x}", serial, kind, f"fp{n}", f"kfp{n}", "9999-12-31T23:59:59+00:00", "PEM", "issued")


def test_claim_rules(repo: Repository) -> None:
    repo.claim_device("SN1", "02:00:00:00:00:01", "RC-1000", "st1", "op", 100.0, 60.0, "1.0", "ab" * 32)
    # The same station resumes; another station waits out the lease; then it may take over.
    repo.claim_device("SN1", "02:00:00:00:00:01", "RC-1000", "st1", "op", 110.0, 60.0)
    with pytest.raises(JobRefused) as err:
        repo.claim_device("SN1", "02:00:00:00:00:01", "RC-1000", "st2", "op", 120.0, 60.0)
    assert err.value.code == "provision.busy"
    repo.claim_device("SN1", "02:00:00:00:00:01", "RC-1000", "st2", "op", 1000.0, 60.0)
    with pytest.raises(JobRefused):  # st1 lost the job
        repo.set_step("SN1", "keys", "st1", 1001.0)
    for serial, mac, model, code in [
        ("SN2", "02:00:00:00:00:01", "RC-1000", "provision.duplicate_mac"),
        ("SN1", "02:00:00:00:00:09", "RC-1000", "provision.mac_mismatch"),
        ("SN1", "02:00:00:00:00:01", "RC-2000", "provision.model_mismatch"),
    ]:
        with pytest.raises(JobRefused) as err:
            repo.claim_device(serial, mac, model, "st2", "op", 1002.0, 60.0)
        assert err.value.code == code
    repo.replace_cert(_cert("SN1", "idevid", 1), "st2", 1003.0)
    repo.replace_cert(_cert("SN1", "tls", 2), "st2", 1003.0)
    repo.mark_locked("SN1", "st2", 1004.0)
    with pytest.raises(JobRefused) as err:
        repo.claim_device("SN1", "02:00:00:00:00:01", "RC-1000", "st2", "op", 1005.0, 60.0)
    assert err.value.code == "provision.duplicate_serial"
    rows = repo.export()
    assert len(rows) == 1 and rows[0]["idevid_sha256"] == "fp1" and rows[0]["tls_key_sha256"] == "kfp2"
    assert rows[0]["firmware_sha256"] == "ab" * 32 and rows[0]["station"] == "st2"


def test_certificate_constraints(repo: Repository) -> None:
    repo.claim_device("SN1", "02:00:00:00:00:01", "RC-1000", "st1", "op", 1.0, 60.0)
    repo.claim_device("SN2", "02:00:00:00:00:02", "RC-1000", "st1", "op", 1.0, 60.0)
    repo.replace_cert(_cert("SN1", "idevid", 1), "st1", 2.0)
    # Re-keyed device: the old certificate is revoked in the same transaction, never two live ones.
    repo.replace_cert(_cert("SN1", "idevid", 3), "st1", 3.0)
    live = repo.live_certs("SN1")
    assert [c.cert_serial for c in live] == ["3"]
    assert {c.cert_serial: c.status for c in repo.all_certs()} == {"1": "revoked", "3": "issued"}
    # One key on two serials, one certificate serial twice: refused by the database.
    dup_key = CertRow("99", "SN2", "idevid", "fp99", "kfp3", "x", "PEM", "issued")
    dup_serial = CertRow("3", "SN2", "idevid", "fp98", "kfp98", "x", "PEM", "issued")
    dup_fp = CertRow("97", "SN2", "idevid", "fp3", "kfp97", "x", "PEM", "issued")
    for row in (dup_key, dup_serial, dup_fp):
        with pytest.raises(JobRefused) as err:
            repo.replace_cert(row, "st1", 4.0)
        assert err.value.code == "provision.duplicate_key"
    # The failed inserts rolled back their revocations too: SN2 still has none, SN1 keeps cert 3.
    assert [c.cert_serial for c in repo.live_certs("SN1")] == ["3"]
    assert repo.live_certs("SN2") == []


def test_racing_claims_one_winner(repo: Repository, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two stations, each with its own connection, claim the same new serial at the same moment."""
    second = (
        SqliteRepository(tmp_path / "f.db")
        if isinstance(repo, SqliteRepository)
        else open_repository(request.getfixturevalue("pg_db"))
    )
    results: list[str] = []
    barrier = threading.Barrier(2)

    def claim(r: Repository, station: str) -> None:
        barrier.wait()
        try:
            r.claim_device("SN7", "02:00:00:00:00:07", "RC-1000", station, "op", 10.0, 60.0)
            results.append("won")
        except JobRefused as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=claim, args=(r, f"st{i}")) for i, r in enumerate((repo, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    second.close()
    assert sorted(results) == ["provision.busy", "won"]
