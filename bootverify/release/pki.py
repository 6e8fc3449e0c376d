"""Release PKI: one root, short-lived release signing certificates under it, and a CRL.

Layout of a PKI directory (0700; keys 0600, generated at run time, never committed):

    root.pem  root.key          the trust anchor devices carry as their keyring (root.pem only)
    signing-<serial>.pem/.key   release signing certificates; ``current`` names the one in use
    crl.pem                     CRL signed by the root, CRL number increasing; shipped in bundles
    index.json                  serials issued / revoked, next CRL number

Rotation = issue a new signing certificate under the same root (devices need nothing new);
revocation = add the serial to the CRL; every later bundle carries the CRL inside its signature.
Signing certificates have no extended key usage (what RAUC 1.8 accepts by default), key usage
digitalSignature, basicConstraints CA:FALSE.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bootverify.errors import ReleaseError
from bootverify.fsutil import atomic_write

ROOT_DAYS = 20 * 365
SIGNING_DAYS = 2 * 365
CRL_DAYS = 90


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Camera Firmware Release"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def root_cert_file(self) -> Path:
        return self.directory / "root.pem"

    @property
    def root_key_file(self) -> Path:
        return self.directory / "root.key"

    @property
    def crl_file(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def index_file(self) -> Path:
        return self.directory / "index.json"

    def signing_files(self, serial: int) -> tuple[Path, Path]:
        return self.directory / f"signing-{serial:x}.pem", self.directory / f"signing-{serial:x}.key"

    # -- state --

    def _index(self) -> dict[str, Any]:
        try:
            obj = json.loads(self.index_file.read_bytes())
        except FileNotFoundError as exc:
            raise ReleaseError(f"{self.directory} is not a PKI (run pki init)", code="release.no_pki") from exc
        if not isinstance(obj, dict):
            raise ReleaseError("index.json is corrupt", code="release.pki_corrupt")
        return obj

    def root(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.root_cert_file.read_bytes())
        key = serialization.load_pem_private_key(self.root_key_file.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ReleaseError("root key is not EC", code="release.key_type")
        return cert, key

    def current_signing(self) -> tuple[Path, Path]:
        return self.signing_files(int(self._index()["current"], 16))

    def revoked(self) -> list[int]:
        return [int(s, 16) for s in self._index().get("revoked", [])]

    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_pem_x509_crl(self.crl_file.read_bytes())

    # -- operations --

    @classmethod
    def init(cls, directory: Path, *, now: dt.datetime, root_cn: str = "Camera Release Root",
             signing_days: int = SIGNING_DAYS) -> Pki:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        pki = cls(directory)
        if pki.root_cert_file.exists():
            raise ReleaseError(f"{directory} already holds a PKI", code="release.pki_exists")
        key = ec.generate_private_key(ec.SECP384R1())
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(root_cn)).issuer_name(_name(root_cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=ROOT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA384())
        )
        atomic_write(pki.root_key_file, _key_pem(key))
        atomic_write(pki.root_cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        index = {"issued": [], "revoked": [], "crl_number": 0, "current": None}
        atomic_write(pki.index_file, json.dumps(index).encode())
        pki.issue_signing(now=now, days=signing_days)
        pki.write_crl(now=now)
        return pki

    def issue_signing(self, *, now: dt.datetime, days: int = SIGNING_DAYS,
                      public_key: ec.EllipticCurvePublicKey | None = None,
                      not_before: dt.datetime | None = None) -> int:
        """New signing certificate (rotation). With ``public_key`` (a PKCS#11 key) no key file is written."""
        root_cert, root_key = self.root()
        key = None
        if public_key is None:
            key = ec.generate_private_key(ec.SECP256R1())
            public_key = key.public_key()
        serial = x509.random_serial_number()
        start = not_before if not_before is not None else now - dt.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"Camera Release Signing {serial:x}"[:64])).issuer_name(root_cert.subject)
            .public_key(public_key).serial_number(serial)
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA384())
        )
        cert_file, key_file = self.signing_files(serial)
        if key is not None:
            atomic_write(key_file, _key_pem(key))
        atomic_write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        index = self._index()
        index["issued"].append(f"{serial:x}")
        index["current"] = f"{serial:x}"
        atomic_write(self.index_file, json.dumps(index).encode())
        return serial

    def revoke(self, serial: int, *, now: dt.datetime) -> None:
        index = self._index()
        if f"{serial:x}" not in index["issued"]:
            raise ReleaseError(f"serial {serial:x} was not issued by this PKI", code="release.unknown_serial")
        if f"{serial:x}" not in index["revoked"]:
            index["revoked"].append(f"{serial:x}")
        if index.get("current") == f"{serial:x}":
            index["current"] = None
        atomic_write(self.index_file, json.dumps(index).encode())
        self.write_crl(now=now)

    def write_crl(self, *, now: dt.datetime, days: int = CRL_DAYS) -> x509.CertificateRevocationList:
        root_cert, root_key = self.root()
        index = self._index()
        index["crl_number"] = int(index.get("crl_number", 0)) + 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(root_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        )
        for serial_hex in index["revoked"]:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(serial_hex, 16))
                .revocation_date(now - dt.timedelta(minutes=5)).build())
        crl = builder.sign(root_key, hashes.SHA384())
        atomic_write(self.crl_file, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        atomic_write(self.index_file, json.dumps(index).encode())
        return crl
