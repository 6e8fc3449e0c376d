"""Who holds the issuing CA key: a file (development) or an HSM via PKCS#11 (SoftHSM2 in tests).

cryptography signs certificates only with its own key objects, so HSM issuance builds the
certificate once with a throwaway P-256 key of the same algorithm, takes the TBSCertificate (which
already names ecdsa-with-SHA256), has the token sign it, and assembles Certificate ::= SEQUENCE {
tbs, algorithm, BIT STRING signature } by hand. The throwaway signature is discarded.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID

from provisioning.errors import PkiError

# AlgorithmIdentifier { ecdsa-with-SHA256 } with absent parameters (RFC 5758 3.2).
_ECDSA_SHA256_ALGID = bytes.fromhex("300a06082a8648ce3d040302")


class Signer(Protocol):
    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class FileSigner:
    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self._key, hashes.SHA256())

    def describe(self) -> str:
        return "file"

    def close(self) -> None:
        return None


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def assemble_certificate(tbs: bytes, raw_signature: bytes) -> x509.Certificate:
    """DER Certificate from a TBSCertificate and a PKCS#11 ECDSA signature (r || s)."""
    half = len(raw_signature) // 2
    sig = encode_dss_signature(int.from_bytes(raw_signature[:half], "big"), int.from_bytes(raw_signature[half:], "big"))
    bits = b"\x03" + _der_len(len(sig) + 1) + b"\x00" + sig
    body = tbs + _ECDSA_SHA256_ALGID + bits
    return x509.load_der_x509_certificate(b"\x30" + _der_len(len(body)) + body)


class Pkcs11Signer:
    """An EC P-256 private key inside a PKCS#11 token, found by label; the PIN never touches disk."""

    def __init__(self, module: str, token_label: str, key_label: str, pin: str) -> None:
        import pkcs11
        from pkcs11.util.ec import encode_ec_public_key

        self._pkcs11 = pkcs11
        try:
            lib = pkcs11.lib(module)
            token = lib.get_token(token_label=token_label)
            try:
                self._session: Any = token.open(user_pin=pin)
            except pkcs11.UserAlreadyLoggedIn:
                # PKCS#11 logins are per application: another signer in this process already
                # logged in, and every new session shares that state.
                self._session = token.open()
            self._priv: Any = self._session.get_key(
                object_class=pkcs11.ObjectClass.PRIVATE_KEY, key_type=pkcs11.KeyType.EC, label=key_label
            )
            pub: Any = self._session.get_key(
                object_class=pkcs11.ObjectClass.PUBLIC_KEY, key_type=pkcs11.KeyType.EC, label=key_label
            )
        except pkcs11.PKCS11Error as exc:
            raise PkiError(f"PKCS#11: {type(exc).__name__}", code="provision.pkcs11") from exc
        loaded = serialization.load_der_public_key(encode_ec_public_key(pub))
        if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(loaded.curve, ec.SECP256R1):
            raise PkiError("HSM key is not ECDSA P-256", code="provision.pkcs11")
        self._pub = loaded
        self._label = f"pkcs11:{token_label}/{key_label}"
        self._mutex = threading.Lock()  # one PKCS#11 session, used from executor threads
        self._scratch = ec.generate_private_key(ec.SECP256R1())

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._pub

    def sign_raw(self, data: bytes) -> bytes:
        with self._mutex:
            try:
                # CKM_ECDSA over a SHA-256 digest made here: SoftHSM 2.6 (Debian 12) and many tokens
                # lack CKM_ECDSA_SHA256, and hashing on the host changes nothing about the key.
                digest = hashlib.sha256(data).digest()
                return bytes(self._priv.sign(digest, mechanism=self._pkcs11.Mechanism.ECDSA))
            except self._pkcs11.PKCS11Error as exc:
                raise PkiError(f"PKCS#11 sign: {type(exc).__name__}", code="provision.pkcs11") from exc

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        draft = builder.sign(self._scratch, hashes.SHA256())
        if draft.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
            raise PkiError("unexpected draft signature algorithm", code="provision.pkcs11")
        tbs = draft.tbs_certificate_bytes
        cert = assemble_certificate(tbs, self.sign_raw(tbs))
        # A signature we cannot verify with the public key is a broken token, not a certificate.
        self._pub.verify(cert.signature, tbs, ec.ECDSA(hashes.SHA256()))
        return cert

    def describe(self) -> str:
        return self._label

    def close(self) -> None:
        self._session.close()


def generate_pkcs11_key(module: str, token_label: str, key_label: str, pin: str) -> None:
    """Create the issuing CA key pair inside the token (non-extractable, sensitive)."""
    import pkcs11
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    try:
        lib = pkcs11.lib(module)
        token = lib.get_token(token_label=token_label)
        with token.open(user_pin=pin, rw=True) as session:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
            )
            params.generate_keypair(
                store=True,
                label=key_label,
                private_template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True},
            )
    except pkcs11.PKCS11Error as exc:
        raise PkiError(f"PKCS#11 key generation: {type(exc).__name__}", code="provision.pkcs11") from exc


def load_key_file(path: Path, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=password)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot load key {path.name}", code="provision.key_unreadable") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path.name} is not an EC key", code="provision.key_type")
    return key
