"""The factory PKI on disk: an offline root, an issuing CA (file or PKCS#11), station certificates.

PKI/                      0700
  pki.json                policy and where the issuing key lives (never a PIN or a key)
  root-ca.pem             the trust anchor devices carry in their image (factory CA)
  root-ca.key             0600; offline root: move it off the station after init
  issuing-ca.pem
  issuing-ca.key          0600; only with the file signer (development)
  stations/NAME.pem       station certificate + issuing CA (the chain it presents)
  stations/NAME.key       0600
"""

from __future__ import annotations

import datetime as dt
import json
import re
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.factory import protocol as p
from agent.state import atomic_write, ensure_dir, read_json
from agent.tlsconfig import client_context
from provisioning import certs
from provisioning.errors import PkiError
from provisioning.signer import FileSigner, Pkcs11Signer, Signer, generate_pkcs11_key, load_key_file

_STATION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Pkcs11Ref:
    module: str
    token_label: str
    key_label: str


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def check_station_name(name: str) -> str:
    if not _STATION_RE.fullmatch(name):
        raise PkiError("station name must be 1-64 characters A-Z a-z 0-9 . _ -", code="provision.bad_station")
    return name


def init_pki(
    directory: Path,
    *,
    policy: certs.Policy,
    station: str,
    now: dt.datetime,
    pkcs11: Pkcs11Ref | None = None,
    pkcs11_pin: str | None = None,
    root_passphrase: bytes | None = None,
) -> None:
    if (directory / "pki.json").exists():
        raise PkiError(f"{directory} already holds a PKI", code="provision.pki_exists")
    p.check_oui(policy.oui)
    ensure_dir(directory)
    ensure_dir(directory / "stations")
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = certs.root_ca(root_key, policy, now)
    signer: Signer
    if pkcs11 is not None:
        if pkcs11_pin is None:
            raise PkiError("a PKCS#11 PIN is required", code="provision.pkcs11_pin")
        generate_pkcs11_key(pkcs11.module, pkcs11.token_label, pkcs11.key_label, pkcs11_pin)
        signer = Pkcs11Signer(pkcs11.module, pkcs11.token_label, pkcs11.key_label, pkcs11_pin)
    else:
        issuing_key = ec.generate_private_key(ec.SECP256R1())
        atomic_write(directory / "issuing-ca.key", _key_pem(issuing_key))
        signer = FileSigner(issuing_key)
    issuing = certs.issuing_ca(root_key, root, signer.public_key(), policy, now)
    atomic_write(directory / "root-ca.key", _key_pem(root_key, root_passphrase))
    atomic_write(directory / "root-ca.pem", _pem(root), 0o644)
    atomic_write(directory / "issuing-ca.pem", _pem(issuing), 0o644)
    doc: dict[str, Any] = {
        "version": 1,
        "policy": asdict(policy),
        "issuing": {"type": "pkcs11", **asdict(pkcs11)} if pkcs11 else {"type": "file"},
    }
    atomic_write(directory / "pki.json", json.dumps(doc, indent=2).encode() + b"\n")
    try:
        add_station(directory, station, signer, now)
    finally:
        signer.close()


def _load_doc(directory: Path) -> dict[str, Any]:
    try:
        doc = read_json(directory / "pki.json", max_bytes=64 * 1024)
    except FileNotFoundError as exc:
        raise PkiError(f"no PKI in {directory} (run `camera-provision pki init`)", code="provision.no_pki") from exc
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise PkiError("pki.json has an unknown format", code="provision.pki_format")
    return doc


def load_policy(directory: Path) -> certs.Policy:
    return certs.Policy(**_load_doc(directory)["policy"])


def pkcs11_ref(directory: Path) -> Pkcs11Ref | None:
    issuing = _load_doc(directory)["issuing"]
    if issuing.get("type") != "pkcs11":
        return None
    return Pkcs11Ref(issuing["module"], issuing["token_label"], issuing["key_label"])


def load_signer(directory: Path, pkcs11_pin: str | None = None) -> Signer:
    ref = pkcs11_ref(directory)
    if ref is None:
        return FileSigner(load_key_file(directory / "issuing-ca.key"))
    if pkcs11_pin is None:
        raise PkiError("the issuing key is in an HSM: give the PKCS#11 PIN", code="provision.pkcs11_pin")
    return Pkcs11Signer(ref.module, ref.token_label, ref.key_label, pkcs11_pin)


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot load {path.name}", code="provision.cert_unreadable") from exc


def add_station(directory: Path, name: str, signer: Signer, now: dt.datetime) -> Path:
    check_station_name(name)
    policy = load_policy(directory)
    issuing = load_cert(directory / "issuing-ca.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.station_certificate(signer, issuing, key.public_key(), name, policy, now)
    stations = ensure_dir(directory / "stations")
    atomic_write(stations / f"{name}.key", _key_pem(key))
    atomic_write(stations / f"{name}.pem", _pem(cert) + _pem(issuing), 0o644)
    return stations / f"{name}.pem"


@dataclass
class StationPki:
    """Everything a running station needs: the signer, the CA certificates, its own TLS identity."""

    directory: Path
    name: str
    signer: Signer
    policy: certs.Policy
    root: x509.Certificate
    issuing: x509.Certificate

    @classmethod
    def load(cls, directory: Path, station: str | None = None, pkcs11_pin: str | None = None) -> StationPki:
        if station is None:
            names = sorted(path.stem for path in (directory / "stations").glob("*.pem"))
            if len(names) != 1:
                raise PkiError("several station certificates: choose one with --station", code="provision.station")
            station = names[0]
        check_station_name(station)
        signer = load_signer(directory, pkcs11_pin)
        issuing = load_cert(directory / "issuing-ca.pem")
        if signer.public_key().public_numbers() != issuing.public_key().public_numbers():  # type: ignore[union-attr]
            raise PkiError("issuing key does not match issuing-ca.pem", code="provision.key_mismatch")
        return cls(directory, station, signer, load_policy(directory), load_cert(directory / "root-ca.pem"), issuing)

    @property
    def chain_pem(self) -> bytes:
        """What a device installs after its leaf: the issuing CA (the root is its trust anchor)."""
        return _pem(self.issuing)

    def client_ssl_context(self) -> ssl.SSLContext:
        """Mutual TLS to a device in factory state. The device's factory-state certificate is a
        throwaway, so it is not validated here; the device is authenticated by its CSR keys and
        the signed challenge, and the connection is pinned to one certificate per run."""
        ctx = client_context(cadata=_pem(self.root).decode())
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        stations = self.directory / "stations"
        ctx.load_cert_chain(stations / f"{self.name}.pem", stations / f"{self.name}.key")
        return ctx


def describe(directory: Path) -> dict[str, Any]:
    doc = _load_doc(directory)
    out: dict[str, Any] = {"policy": doc["policy"], "issuing_key": doc["issuing"]}
    for label, name in (("root", "root-ca.pem"), ("issuing", "issuing-ca.pem")):
        cert = load_cert(directory / name)
        out[label] = {
            "subject": cert.subject.rfc4514_string(),
            "sha256": p.cert_fingerprint(cert),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
    out["stations"] = {}
    for path in sorted((directory / "stations").glob("*.pem")):
        cert = load_cert(path)
        out["stations"][path.stem] = {
            "sha256": p.cert_fingerprint(cert),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
    return out
