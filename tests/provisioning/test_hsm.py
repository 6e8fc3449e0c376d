"""Issuing CA key inside SoftHSM2 via PKCS#11: `pki init` and a full device run through the CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.identity import provisioned
from agent.state import StateDir
from provisioning.pki import StationPki
from tests.conftest import need
from tests.provisioning.procs import DeviceProcess, provision_cli
from tests.provisioning.softhsm import module_path, softhsm_token


def test_hsm_pki_and_device(tmp_path: Path) -> None:
    if module_path() is None:
        pytest.fail("SoftHSM2 missing (apt softhsm2): a broken machine setup")
    need("softhsm2-util", "pkcs11-tool")
    with softhsm_token(tmp_path / "hsm") as token:
        pin_file = tmp_path / "pin"
        pin_file.write_text(token.pin)
        pin_file.chmod(0o600)
        pki_dir = tmp_path / "pki"
        rc, out = provision_cli(
            [
                "pki",
                "init",
                "--dir",
                str(pki_dir),
                "--oui",
                "0A1B2C",
                "--pkcs11-module",
                token.module,
                "--pkcs11-token-label",
                token.label,
                "--pkcs11-pin-file",
                str(pin_file),
            ]
        )
        assert rc == 0, out
        assert out["issuing_key"]["type"] == "pkcs11"
        assert not (pki_dir / "issuing-ca.key").exists()  # the key exists only in the token
        # The issuing CA key is not extractable.
        listing = subprocess.run(
            [
                "pkcs11-tool",
                "--module",
                token.module,
                "--token-label",
                token.label,
                "--login",
                "--pin",
                token.pin,
                "--list-objects",
                "--type",
                "privkey",
            ],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
        )
        assert listing.returncode == 0, listing.stderr
        assert "never extractable" in listing.stdout and "sensitive" in listing.stdout

        # Without the PIN the station cannot sign.
        rc, out = provision_cli(["pki", "station", "--dir", str(pki_dir), "--name", "station-x"])
        assert rc == 1 and out["error"] == "provision.pkcs11_pin"
        # A wrong PIN is refused by the token.
        bad = tmp_path / "bad"
        bad.write_text("0000000000")
        rc, out = provision_cli(
            ["pki", "station", "--dir", str(pki_dir), "--name", "station-x", "--pkcs11-pin-file", str(bad)]
        )
        assert rc == 1 and out["error"] == "provision.pkcs11"

        dev = DeviceProcess(tmp_path / "dev", pki_dir / "root-ca.pem", "HSM0000001")
        dev.start()
        try:
            rc, out = provision_cli(
                [
                    "device",
                    "--pki",
                    str(pki_dir),
                    "--db",
                    f"sqlite:///{tmp_path / 'f.db'}",
                    "--serial",
                    "HSM0000001",
                    "--model",
                    "RC-1000",
                    "--label-dir",
                    str(tmp_path / "labels"),
                    "--pkcs11-pin-file",
                    str(pin_file),
                    f"127.0.0.1:{dev.factory_port}",
                ]
            )
            assert rc == 0, out
            rc, out = provision_cli(
                [
                    "verify",
                    "--ca",
                    str(pki_dir / "root-ca.pem"),
                    "--serial",
                    "HSM0000001",
                    f"127.0.0.1:{dev.https_port}",
                ]
            )
            assert rc == 0 and out["valid"] is True, out
        finally:
            dev.stop()
        record = provisioned.load(StateDir(dev.state_dir.resolve()))
        assert record is not None
        issuing = x509.load_pem_x509_certificate((pki_dir / "issuing-ca.pem").read_bytes())
        for cert in (record.idevid_certificate(), record.tls_certificate()):
            pub = issuing.public_key()
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
            cert.verify_directly_issued_by(issuing)
        # In process as well: the signer loads, and its public key is the issuing CA's.
        station = StationPki.load(pki_dir, "station-1", token.pin)
        assert station.signer.describe().startswith("pkcs11:")
        assert json.loads((pki_dir / "pki.json").read_text())["issuing"]["key_label"] == "factory-issuing-ca"
        assert dt.datetime.now(dt.UTC) < record.tls_certificate().not_valid_after_utc
