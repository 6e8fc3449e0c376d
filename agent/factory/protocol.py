"""What the factory station and the device agree on: paths, limits, names, proof-of-possession.

Pure functions only; both sides import this module (the station from ``provisioning``). The wire
format is JSON over HTTPS with mutual TLS; every field is validated here with explicit bounds.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.factory.errors import FactoryForbidden, FactoryInvalid
from agent.identity.selfissued import device_hostname

API = "/factory/v1"
PATH_DEVICE = f"{API}/device"
PATH_KEYS = f"{API}/keys"
PATH_CERTS = f"{API}/certificates"
PATH_CHALLENGE = f"{API}/challenge"
PATH_SETUP_CODE = f"{API}/setup-code"
PATH_LOCK = f"{API}/lock"

# An extended key usage only factory station certificates carry. Device certificates come from
# the same issuing CA (and IDevIDs carry clientAuth for 802.1X), so "chains to the factory CA" is
# not enough to tell a station from a camera. 2.25.<UUID> is an OID that needs no registration
# (ITU-T X.667); this UUID was drawn once from the kernel RNG for this project.
STATION_EKU = x509.ObjectIdentifier("2.25.25720814800226468406926243973285366403")

NONCE_LEN = 32
MAX_BODY = 32 * 1024
MAX_CHAIN_PEM = 16 * 1024
MAX_CHAIN_CERTS = 4
MAX_CSR_PEM = 4 * 1024
KEY_KINDS = ("idevid", "tls")
POP_CONTEXT = b"camera-factory-pop/v1"

_SERIAL_RE = re.compile(r"[A-Z0-9]{4,32}")
_MODEL_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_OUI_RE = re.compile(r"[0-9A-F]{6}")


def check_serial(value: object) -> str:
    if not isinstance(value, str) or not _SERIAL_RE.fullmatch(value):
        raise FactoryInvalid("serial must be 4-32 characters A-Z 0-9", code="factory.bad_serial")
    return value


def check_model(value: object) -> str:
    if not isinstance(value, str) or not _MODEL_RE.fullmatch(value):
        raise FactoryInvalid("model must be 1-32 characters A-Z a-z 0-9 . _ -", code="factory.bad_model")
    return value


def normalize_mac(value: object) -> str:
    if not isinstance(value, str):
        raise FactoryInvalid("MAC must be a string", code="factory.bad_mac")
    mac = value.strip().lower().replace("-", ":")
    if not _MAC_RE.fullmatch(mac):
        raise FactoryInvalid("MAC must look like 00:11:22:33:44:55", code="factory.bad_mac")
    if int(mac[:2], 16) & 1:
        raise FactoryInvalid("MAC must be a unicast address", code="factory.bad_mac")
    return mac


def check_oui(value: str) -> str:
    oui = value.upper().replace(":", "").replace("-", "")
    if not _OUI_RE.fullmatch(oui):
        raise FactoryInvalid("OUI must be 6 hex digits", code="factory.bad_oui")
    return oui


def product_uri(oui: str, model: str, serial: str) -> str:
    """RFC 9039 device URN: urn:dev:ops:<OUI>-<product>-<serial> ('-' inside product escaped)."""
    return f"urn:dev:ops:{check_oui(oui)}-{check_model(model).replace('-', '%2D')}-{check_serial(serial)}"


def tls_hostname(serial: str) -> str:
    return device_hostname(check_serial(serial))


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(value: object, *, max_len: int, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > (max_len * 4) // 3 + 4:
        raise FactoryInvalid(f"{what} is missing or too long", code="factory.bad_field")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise FactoryInvalid(f"{what} is not base64", code="factory.bad_field") from exc


def get_str(doc: dict[str, Any], key: str, max_len: int) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or len(value) > max_len:
        raise FactoryInvalid(f"{key} must be a string of at most {max_len} characters", code="factory.bad_field")
    return value


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cert_fingerprint(cert: x509.Certificate) -> str:
    return sha256_hex(cert.public_bytes(serialization.Encoding.DER))


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the SubjectPublicKeyInfo, the form certificate tools show."""
    return sha256_hex(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def load_chain(pem: object) -> list[x509.Certificate]:
    """Parse a bounded PEM chain, leaf first."""
    if not isinstance(pem, str) or len(pem) > MAX_CHAIN_PEM:
        raise FactoryInvalid("certificate chain missing or too large", code="factory.bad_chain")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise FactoryInvalid("certificate chain does not parse", code="factory.bad_chain") from exc
    if not 1 <= len(certs) <= MAX_CHAIN_CERTS:
        raise FactoryInvalid("certificate chain has a bad length", code="factory.bad_chain")
    return certs


def load_csr(pem: object) -> x509.CertificateSigningRequest:
    if not isinstance(pem, str) or len(pem) > MAX_CSR_PEM:
        raise FactoryInvalid("CSR missing or too large", code="factory.bad_csr")
    try:
        return x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise FactoryInvalid("CSR does not parse", code="factory.bad_csr") from exc


def ec_public_key(obj: object, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(obj, ec.EllipticCurvePublicKey) or not isinstance(obj.curve, ec.SECP256R1):
        raise FactoryInvalid(f"{what} key is not ECDSA P-256", code="factory.bad_key")
    return obj


def pop_message(kind: str, nonce: bytes, cert_der: bytes) -> bytes:
    """What a device key signs to prove possession: bound to the purpose, the station's fresh
    nonce and the certificate just installed, so the device can never be used to sign anything
    else and an old answer proves nothing about a new certificate."""
    if kind not in KEY_KINDS or len(nonce) != NONCE_LEN:
        raise FactoryInvalid("bad challenge", code="factory.bad_challenge")
    return POP_CONTEXT + b"\x00" + kind.encode() + b"\x00" + nonce + hashlib.sha256(cert_der).digest()


def verify_pop(cert: x509.Certificate, kind: str, nonce: bytes, signature: bytes) -> None:
    key = ec_public_key(cert.public_key(), kind)
    msg = pop_message(kind, nonce, cert.public_bytes(serialization.Encoding.DER))
    try:
        key.verify(signature, msg, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise FactoryInvalid(f"{kind} proof of possession failed", code="factory.pop_failed") from exc


def require_station_certificate(der: bytes | None) -> x509.Certificate:
    """The peer already chained to the factory CA during the handshake; it must also be a station."""
    if der is None:
        raise FactoryForbidden("no client certificate", code="factory.no_client_cert")
    cert = x509.load_der_x509_certificate(der)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise FactoryForbidden("client certificate is not a station certificate", code="factory.not_station") from exc
    if STATION_EKU not in eku or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise FactoryForbidden("client certificate is not a station certificate", code="factory.not_station")
    return cert


def subject_common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


@dataclass(frozen=True)
class DeviceInfo:
    """What GET /device returns: the device's facts and where it is in the flow."""

    serial: str  # "" when no serial is fused yet (the station assigns it)
    mac: str
    model: str
    firmware_version: str
    firmware_sha256: str
    phase: str

    @classmethod
    def from_json(cls, doc: object) -> DeviceInfo:
        if not isinstance(doc, dict):
            raise FactoryInvalid("device info is not an object", code="factory.bad_field")
        serial = get_str(doc, "serial", 32)
        return cls(
            serial=check_serial(serial) if serial else "",
            mac=normalize_mac(get_str(doc, "mac", 17)),
            model=check_model(get_str(doc, "model", 32)),
            firmware_version=get_str(doc, "firmware_version", 64),
            firmware_sha256=get_str(doc, "firmware_sha256", 64),
            phase=get_str(doc, "phase", 16),
        )
