"""Where release signing keys live: PEM files, or a PKCS#11 token (an HSM; SoftHSM2 in tests).

With PKCS#11 the private key never enters this process: the token signs the SHA-256 of the CMS
signed attributes with CKM_ECDSA and the raw r||s is DER-encoded for CMS. The PIN comes from the
environment (``CAMERA_OTA_PKCS11_PIN``), never from the command line (visible in ``ps``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bootverify.bundle.cms import Signer, file_signer
from bootverify.errors import ReleaseError

PIN_ENV = "CAMERA_OTA_PKCS11_PIN"


def load_file_signer(cert_file: Path, key_file: Path) -> Signer:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ReleaseError("signing key must be EC or RSA", code="release.key_type")
    return file_signer(cert, key)


def pkcs11_signer(module: str, token_label: str, key_label: str, cert_file: Path) -> Signer:
    import pkcs11
    from pkcs11 import KeyType, Mechanism, ObjectClass

    pin = os.environ.get(PIN_ENV)
    if not pin:
        raise ReleaseError(f"set {PIN_ENV} to the token's user PIN", code="release.pkcs11_pin")
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise ReleaseError("PKCS#11 signing supports EC keys", code="release.key_type")
    lib = pkcs11.lib(module)
    token = lib.get_token(token_label=token_label)

    def sign(data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        try:
            with token.open(user_pin=pin) as session:
                key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC, label=key_label)
                raw = bytes(key.sign(digest, mechanism=Mechanism.ECDSA))  # type: ignore[attr-defined]
        except pkcs11.PKCS11Error as exc:
            raise ReleaseError(f"PKCS#11 signing failed: {type(exc).__name__}", code="release.pkcs11") from exc
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    return Signer(cert, sign)


def pkcs11_public_key(module: str, token_label: str, key_label: str) -> ec.EllipticCurvePublicKey:
    """The token key's public half, to issue its signing certificate (``pki issue --pkcs11-*``)."""
    import pkcs11
    from pkcs11 import KeyType, ObjectClass
    from pkcs11.util.ec import encode_ec_public_key

    pin = os.environ.get(PIN_ENV)
    if not pin:
        raise ReleaseError(f"set {PIN_ENV} to the token's user PIN", code="release.pkcs11_pin")
    token = pkcs11.lib(module).get_token(token_label=token_label)
    with token.open(user_pin=pin) as session:
        pub = session.get_key(object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC, label=key_label)
        der = encode_ec_public_key(pub)  # type: ignore[arg-type]
    key = serialization.load_der_public_key(der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ReleaseError("token key is not EC", code="release.key_type")
    return key
