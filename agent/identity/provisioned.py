"""The factory-issued identity: one record, written once at the factory lock.

provisioned.json (0600) holds the IDevID and TLS chains, the factory trust anchor and both private
keys sealed with ``derive("identity-keys")`` (AES-256-GCM, associated data naming the key's role and
the device serial, so a sealed key cannot be swapped between roles or devices). Writing it is the
single commit point of provisioning: before it the device is in factory state, after it the
identity is the device's for good.

Hardware hook: on a board with a TPM / TEE / secure element, ``KeySealer`` is the place to keep the
keys inside it (store a handle instead of a sealed blob); the file format keeps the same fields.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.devicesecret import DeviceSecretProvider
from agent.errors import StateError
from agent.sealing import seal, unseal
from agent.state import StateDir, atomic_write_json, read_json

KEY_PURPOSE = "identity-keys"
FILE_NAME = "provisioned.json"
_MAX_RECORD = 128 * 1024


def record_path(state: StateDir) -> Path:
    return state.identity_dir / FILE_NAME


def _aad(kind: str, serial: str) -> bytes:
    return f"identity:factory:{kind}:{serial}".encode()


def key_to_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_from_der(der: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StateError("identity key is not an EC key", code="identity.key_type")
    return key


@dataclass(frozen=True)
class ProvisionedIdentity:
    serial: str
    mac: str
    model: str
    idevid_chain_pem: str
    tls_chain_pem: str
    factory_ca_pem: str
    sealed_idevid_key: bytes
    sealed_tls_key: bytes
    locked_at: float
    station: str

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "serial": self.serial,
            "mac": self.mac,
            "model": self.model,
            "idevid_chain": self.idevid_chain_pem,
            "tls_chain": self.tls_chain_pem,
            "factory_ca": self.factory_ca_pem,
            "idevid_key": base64.b64encode(self.sealed_idevid_key).decode(),
            "tls_key": base64.b64encode(self.sealed_tls_key).decode(),
            "locked_at": self.locked_at,
            "station": self.station,
        }

    @classmethod
    def from_json(cls, doc: object) -> ProvisionedIdentity:
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise StateError("provisioned identity has an unknown format", code="identity.corrupt")
        try:
            return cls(
                serial=str(doc["serial"]),
                mac=str(doc["mac"]),
                model=str(doc["model"]),
                idevid_chain_pem=str(doc["idevid_chain"]),
                tls_chain_pem=str(doc["tls_chain"]),
                factory_ca_pem=str(doc["factory_ca"]),
                sealed_idevid_key=base64.b64decode(str(doc["idevid_key"]), validate=True),
                sealed_tls_key=base64.b64decode(str(doc["tls_key"]), validate=True),
                locked_at=float(doc["locked_at"]),
                station=str(doc["station"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError("provisioned identity is corrupt", code="identity.corrupt") from exc

    def idevid_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.idevid_chain_pem.encode())[0]

    def tls_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificates(self.tls_chain_pem.encode())[0]


class KeySealer:
    """Seals and unseals the identity keys with the device-unique key (hardware hook, see above)."""

    def __init__(self, secret: DeviceSecretProvider) -> None:
        self._key = secret.derive(KEY_PURPOSE)

    def seal(self, kind: str, serial: str, key: ec.EllipticCurvePrivateKey) -> bytes:
        return seal(self._key, key_to_der(key), _aad(kind, serial))

    def unseal(self, kind: str, serial: str, blob: bytes) -> ec.EllipticCurvePrivateKey:
        return key_from_der(unseal(self._key, blob, _aad(kind, serial)))

    def seal_pending(self, kind: str, key: ec.EllipticCurvePrivateKey) -> bytes:
        return seal(self._key, key_to_der(key), f"identity:pending:{kind}".encode())

    def unseal_pending(self, kind: str, blob: bytes) -> ec.EllipticCurvePrivateKey:
        return key_from_der(unseal(self._key, blob, f"identity:pending:{kind}".encode()))


def load(state: StateDir) -> ProvisionedIdentity | None:
    try:
        doc = read_json(record_path(state), max_bytes=_MAX_RECORD)
    except FileNotFoundError:
        return None
    return ProvisionedIdentity.from_json(doc)


def commit(state: StateDir, record: ProvisionedIdentity) -> None:
    atomic_write_json(record_path(state), record.to_json())
