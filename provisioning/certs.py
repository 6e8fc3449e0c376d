"""Pure certificate building for the factory PKI and the per-device certificates.

Time comes in as an argument. Nothing from a CSR is copied except its public key (after the CSR's
self-signature, i.e. proof of possession, and its subject have been checked): extensions a device
asks for are ignored, so a device cannot give itself a CA bit or a station EKU.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.factory import protocol as p
from agent.factory.errors import FactoryInvalid
from provisioning.errors import DeviceInvalid
from provisioning.signer import Signer

# IEEE 802.1AR 8.5: an IDevID has no meaningful expiry; RFC 5280 4.1.2.5 spells that 99991231235959Z.
NO_EXPIRY = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
BACKDATE = dt.timedelta(minutes=5)  # station and device clocks disagree by a little on a factory line


@dataclass(frozen=True)
class Policy:
    organization: str = "Camera Firmware Reference"
    oui: str = "000000"
    tls_days: int = 3650
    station_days: int = 730


def _ku(*, sign: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _name(org: str, cn: str, ou: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def root_ca(key: ec.EllipticCurvePrivateKey, policy: Policy, now: dt.datetime, years: int = 25) -> x509.Certificate:
    name = _name(policy.organization, f"{policy.organization} Factory Root CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ku(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def issuing_ca(
    root_key: ec.EllipticCurvePrivateKey,
    root: x509.Certificate,
    public: ec.EllipticCurvePublicKey,
    policy: Policy,
    now: dt.datetime,
    years: int = 15,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(policy.organization, f"{policy.organization} Factory Issuing CA"))
        .issuer_name(root.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ku(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )


def _leaf_builder(
    issuer: x509.Certificate,
    signer: Signer,
    subject: x509.Name,
    public: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(not_after, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_ku(sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )


def station_certificate(
    signer: Signer,
    issuer: x509.Certificate,
    public: ec.EllipticCurvePublicKey,
    name: str,
    policy: Policy,
    now: dt.datetime,
) -> x509.Certificate:
    builder = _leaf_builder(
        issuer,
        signer,
        _name(policy.organization, name, "Factory Station"),
        public,
        now,
        now + dt.timedelta(days=policy.station_days),
    ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, p.STATION_EKU]), critical=False)
    return signer.sign_certificate(builder)


def check_csr(pem: str, kind: str, serial: str) -> x509.CertificateSigningRequest:
    """Proof of possession (the CSR's own signature), key type and subject, or DeviceInvalid."""
    try:
        csr = p.load_csr(pem)
    except FactoryInvalid as exc:
        raise DeviceInvalid(f"{kind} CSR: {exc.message}", code="provision.bad_csr") from exc
    if not csr.is_signature_valid:
        raise DeviceInvalid(f"{kind} CSR signature is invalid", code="provision.csr_signature")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise DeviceInvalid(f"{kind} CSR key is not P-256", code="provision.csr_key")
    serials = csr.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if len(serials) != 1 or serials[0].value != serial:
        raise DeviceInvalid(f"{kind} CSR subject names another serial", code="provision.csr_subject")
    return csr


def idevid_certificate(
    signer: Signer,
    issuer: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    serial: str,
    model: str,
    policy: Policy,
    now: dt.datetime,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, policy.organization),
            x509.NameAttribute(NameOID.PSEUDONYM, model),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
            x509.NameAttribute(NameOID.COMMON_NAME, serial),
        ]
    )
    public = p.ec_public_key(csr.public_key(), "idevid")
    builder = (
        _leaf_builder(issuer, signer, subject, public, now, NO_EXPIRY)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(p.product_uri(policy.oui, model, serial))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    return signer.sign_certificate(builder)


def tls_certificate(
    signer: Signer,
    issuer: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    serial: str,
    policy: Policy,
    now: dt.datetime,
) -> x509.Certificate:
    host = p.tls_hostname(serial)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, policy.organization),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
            x509.NameAttribute(NameOID.COMMON_NAME, host),
        ]
    )
    public = p.ec_public_key(csr.public_key(), "tls")
    builder = (
        _leaf_builder(issuer, signer, subject, public, now, now + dt.timedelta(days=policy.tls_days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    return signer.sign_certificate(builder)
