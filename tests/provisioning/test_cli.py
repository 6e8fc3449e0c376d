"""The `camera-provision` command line as an operator uses it, against a real device process."""

from __future__ import annotations

import csv
import io
import json
import stat
from pathlib import Path

import pytest
from PIL import Image

from tests.provisioning.procs import DeviceProcess, provision_cli


@pytest.mark.slow
def test_cli_end_to_end(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    rc, out = provision_cli(["pki", "init", "--dir", str(pki_dir), "--oui", "0a:1b:2c"])
    assert rc == 0, out
    assert set(out["stations"]) == {"station-1"}
    for name in ("root-ca.key", "issuing-ca.key", "stations/station-1.key"):
        assert stat.S_IMODE((pki_dir / name).stat().st_mode) == 0o600
    rc, out = provision_cli(["pki", "init", "--dir", str(pki_dir)])
    assert rc == 1 and out["error"] == "provision.pki_exists"
    rc, out = provision_cli(["pki", "station", "--dir", str(pki_dir), "--name", "line2-st1"])
    assert rc == 0, out
    rc, out = provision_cli(["pki", "show", "--dir", str(pki_dir)])
    assert set(out["stations"]) == {"station-1", "line2-st1"}

    dev = DeviceProcess(tmp_path / "dev", pki_dir / "root-ca.pem", "CLI0000001")
    dev.start()
    try:
        # Before provisioning the device's HTTPS chain is self-issued: verify must fail.
        rc, out = provision_cli(["verify", "--ca", str(pki_dir / "root-ca.pem"), f"127.0.0.1:{dev.https_port}"])
        assert rc == 1 and out["error"].startswith("provision.verify"), out
        db = f"sqlite:///{tmp_path / 'line.db'}"
        labels = tmp_path / "labels"
        base = [
            "device",
            "--pki",
            str(pki_dir),
            "--db",
            db,
            "--station",
            "line2-st1",
            "--operator",
            "asha",
            "--label-dir",
            str(labels),
        ]
        rc, out = provision_cli(
            [*base, "--serial", "CLI0000001", "--model", "RC-2000", f"127.0.0.1:{dev.factory_port}"]
        )
        assert rc == 2 and out["error"] == "provision.model_mismatch"
        rc, out = provision_cli(
            [
                *base,
                "--serial",
                "CLI0000001",
                "--model",
                "RC-1000",
                "--mac",
                "02:00:00:00:00:99",
                f"127.0.0.1:{dev.factory_port}",
            ]
        )
        assert rc == 2 and out["error"] == "provision.mac_mismatch"
        rc, out = provision_cli(
            [*base, "--serial", "CLI0000001", "--model", "RC-1000", f"127.0.0.1:{dev.factory_port}"]
        )
        assert rc == 0, out
        assert out["status"] == "locked"
        for ext in ("png", "pdf", "json"):
            path = labels / f"CLI0000001.{ext}"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        job = json.loads((labels / "CLI0000001.json").read_bytes())
        assert job["serial"] == "CLI0000001" and len(job["setup_code"].replace("-", "")) == 20
        assert Image.open(labels / "CLI0000001.png").size == (591, 295)
        assert (labels / "CLI0000001.pdf").read_bytes().startswith(b"%PDF")

        rc, out = provision_cli(
            ["verify", "--ca", str(pki_dir / "root-ca.pem"), "--serial", "CLI0000001", f"127.0.0.1:{dev.https_port}"]
        )
        assert rc == 0 and out["valid"] and out["serial"] == "CLI0000001", out
        rc, out = provision_cli(
            ["verify", "--ca", str(pki_dir / "root-ca.pem"), "--serial", "CLI0000002", f"127.0.0.1:{dev.https_port}"]
        )
        assert rc == 1 and out["error"] == "provision.verify_wrong_serial"
        other = tmp_path / "other"
        provision_cli(["pki", "init", "--dir", str(other)])
        rc, out = provision_cli(["verify", "--ca", str(other / "root-ca.pem"), f"127.0.0.1:{dev.https_port}"])
        assert rc == 1 and out["error"] == "provision.verify_invalid"
    finally:
        dev.stop()

    rc, out = provision_cli(["export", "--db", db, "--format", "json"])
    assert rc == 0
    (row,) = out["devices"]
    assert row["serial"] == "CLI0000001" and row["station"] == "line2-st1" and row["operator"] == "asha"
    assert len(row["idevid_sha256"]) == 64 and len(row["firmware_sha256"]) == 64
    csv_path = tmp_path / "export.csv"
    rc, _ = provision_cli(["export", "--db", db, "--format", "csv", "--out", str(csv_path)])
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert rc == 0 and rows[0]["tls_sha256"] == row["tls_sha256"]
    assert "setup_code" not in csv_path.read_text() and job["setup_code"] not in csv_path.read_text()
