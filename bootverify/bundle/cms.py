"""CMS SignedData for bundle manifests: create (release side) and verify (device side), in process.

cryptography 50 can sign PKCS#7 but not verify it, so the ASN.1 is handled with asn1crypto (a
dependency of python-pkcs11) and every cryptographic check with cryptography:

- the signer's certificate must chain to the device keyring (``x509.verification.PolicyBuilder``:
  validity at ``now``, CA basic constraints and key usage on issuers, WebPKI key sizes/algorithms);
- purpose as RAUC 1.8 checks it by default: no extended key usage, or one that names
  emailProtection or codeSigning; key usage, when present, must allow digitalSignature;
- signed attributes are required: content-type must be id-data, message-digest must equal the
  digest of the encapsulated manifest, and the signature covers the DER SET of those attributes;
- revocation: CRLs from the keyring store and CRLs carried in the SignedData's ``crls`` field
  (that is how a release ships a newer CRL). A CRL counts only if its issuer's key verifies it and
  it is inside its validity window; the newest (highest CRL number) per issuer wins.

Everything is a pure function of (bytes, trust anchors, time). Signer count: with the default
``min_signers=1`` exactly one signer, as rauc 1.8 ("Unsupported number of signers"), so the set of
bundles a device accepts is the set RAUC accepts; ``min_signers=k >= 2`` (k-of-n release signing,
our extension) accepts up to ``MAX_SIGNERS`` signers, every one must verify and at least k must
be distinct keys (docs/ota.md, "Multi-signer bundles").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asn1crypto import algos, cms, core  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from bootverify.bundle.limits import MAX_SIGNATURE_BYTES
from bootverify.errors import SignatureError

MAX_SIGNERS = 4
MAX_CERTS = 16
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_ALLOWED_EKU = {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CODE_SIGNING}


@dataclass(frozen=True)
class Keyring:
    """Trust anchors (release roots) and the CRLs the device already knows."""

    roots: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()

    @classmethod
    def from_pem(cls, pem: bytes, crl_pems: Sequence[bytes] = ()) -> Keyring:
        try:
            roots = tuple(x509.load_pem_x509_certificates(pem))
            crls = tuple(_load_crls(b"".join(crl_pems)))
        except ValueError as exc:
            raise SignatureError(f"keyring does not parse: {exc}", code="bundle.keyring_invalid") from exc
        if not roots:
            raise SignatureError("keyring holds no certificate", code="bundle.keyring_invalid")
        # A keyring file may also carry CRLs (PEM "X509 CRL" blocks), as RAUC's keyring can.
        crls += tuple(_load_crls(pem))
        return cls(roots, crls)


def _load_crls(pem: bytes) -> list[x509.CertificateRevocationList]:
    out = []
    marker = b"-----BEGIN X509 CRL-----"
    for part in pem.split(marker)[1:]:
        end = part.find(b"-----END X509 CRL-----")
        if end < 0:
            raise ValueError("unterminated CRL")
        out.append(x509.load_pem_x509_crl(marker + part[: end + len(b"-----END X509 CRL-----")]))
    return out


@dataclass(frozen=True)
class SignerInfo:
    subject: str
    serial: int
    chain: tuple[x509.Certificate, ...]  # leaf first, root last
    not_after: dt.datetime


@dataclass(frozen=True)
class VerifiedContent:
    content: bytes
    signers: tuple[SignerInfo, ...]
    crls: tuple[x509.CertificateRevocationList, ...]  # newest valid CRL per issuer that was used


# ---- signing ------------------------------------------------------------------------------------

# sign(data, hash) -> signature bytes as CMS wants them (DER ECDSA / PKCS#1 v1.5). A PKCS#11 key
# plugs in here without the private key ever being in this process.
SignFn = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Signer:
    certificate: x509.Certificate
    sign: SignFn
    chain: tuple[x509.Certificate, ...] = ()  # intermediates to include (not the root)


def file_signer(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
                chain: Sequence[x509.Certificate] = ()) -> Signer:
    def sign(data: bytes) -> bytes:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(hashes.SHA256()))
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    return Signer(certificate, sign, tuple(chain))


def _sig_algo(cert: x509.Certificate) -> str:
    pub = cert.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return "sha256_ecdsa"
    if isinstance(pub, rsa.RSAPublicKey):
        return "sha256_rsa"
    raise SignatureError("signing key type not supported", code="release.key_type")


def sign_content(content: bytes, signers: Sequence[Signer], *, signing_time: dt.datetime,
                 crls: Sequence[x509.CertificateRevocationList] = ()) -> bytes:
    """DER CMS SignedData with the content embedded (what RAUC's verity format carries)."""
    from asn1crypto import crl as a_crl
    from asn1crypto import x509 as a_x509

    digest = hashlib.sha256(content).digest()
    certs: list[object] = []
    seen: set[bytes] = set()
    infos = []
    for signer in signers:
        for cert in (signer.certificate, *signer.chain):
            der = cert.public_bytes(serialization.Encoding.DER)
            if der not in seen:
                seen.add(der)
                certs.append(cms.CertificateChoices(name="certificate", value=a_x509.Certificate.load(der)))
        a_cert = a_x509.Certificate.load(signer.certificate.public_bytes(serialization.Encoding.DER))
        attrs = cms.CMSAttributes([
            cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
            cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": signing_time})]}),
            cms.CMSAttribute({"type": "message_digest", "values": [digest]}),
        ])
        signature = signer.sign(attrs.dump())
        infos.append(cms.SignerInfo({
            "version": "v1",
            "sid": cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber({
                "issuer": a_cert.issuer, "serial_number": a_cert.serial_number})}),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "signed_attrs": attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": _sig_algo(signer.certificate)}),
            "signature": signature,
        }))
    signed: dict[str, object] = {
        "version": "v1",
        "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
        "encap_content_info": {"content_type": "data", "content": content},
        "certificates": certs,
        "signer_infos": infos,
    }
    if crls:
        signed["crls"] = [
            cms.RevocationInfoChoice(name="crl", value=a_crl.CertificateList.load(
                c.public_bytes(serialization.Encoding.DER))) for c in crls
        ]
    info = cms.ContentInfo({"content_type": "signed_data", "content": cms.SignedData(signed)})
    out: bytes = info.dump()
    return out


# ---- verification -------------------------------------------------------------------------------


def _fail(message: str, code: str = "bundle.signature_invalid") -> SignatureError:
    return SignatureError(message, code=code)


def _verify_raw(cert: x509.Certificate, signature: bytes, data: bytes, algo: str, digest: str) -> None:
    pub = cert.public_key()
    hash_cls = _HASHES.get(digest)
    if hash_cls is None:
        raise _fail(f"digest {digest} not allowed")
    try:
        if isinstance(pub, ec.EllipticCurvePublicKey) and algo in ("ecdsa", f"{digest}_ecdsa"):
            pub.verify(signature, data, ec.ECDSA(hash_cls()))
        elif isinstance(pub, rsa.RSAPublicKey) and algo in ("rsassa_pkcs1v15", f"{digest}_rsa"):
            pub.verify(signature, data, padding.PKCS1v15(), hash_cls())
        else:
            raise _fail(f"signature algorithm {algo} does not fit the signer key", "bundle.signature_algorithm")
    except InvalidSignature as exc:
        raise _fail("CMS signature does not verify") from exc


def _check_purpose(cert: x509.Certificate) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise _fail("a CA certificate cannot sign bundles", "bundle.signer_purpose")
    except x509.ExtensionNotFound:
        pass
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            raise _fail("signer key usage lacks digitalSignature", "bundle.signer_purpose")
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if not _ALLOWED_EKU.intersection(eku):
            raise _fail("signer extended key usage is not for signing", "bundle.signer_purpose")
    except x509.ExtensionNotFound:
        pass


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return -1


def select_crls(candidates: Sequence[x509.CertificateRevocationList], issuers: Sequence[x509.Certificate],
                now: dt.datetime) -> dict[bytes, x509.CertificateRevocationList]:
    """Newest CRL per issuer (keyed by issuer DER name) among those the issuer really signed."""
    best: dict[bytes, x509.CertificateRevocationList] = {}
    for crl in candidates:
        for issuer in issuers:
            if crl.issuer != issuer.subject:
                continue
            pub = issuer.public_key()
            if not isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                continue
            if not crl.is_signature_valid(pub):
                continue
            if crl.last_update_utc > now:
                continue
            key = issuer.subject.public_bytes()
            if key not in best or _crl_number(crl) > _crl_number(best[key]):
                best[key] = crl
    return best


def verify_signed_content(
    der: bytes,
    keyring: Keyring,
    now: dt.datetime,
    *,
    min_signers: int = 1,
    require_crl: bool = False,
    max_bytes: int = MAX_SIGNATURE_BYTES,
) -> VerifiedContent:
    """Check a CMS SignedData against ``keyring`` at time ``now``; return the content it signs.

    Raises SignatureError with a precise code; callers log it and answer with one opaque refusal.
    """
    if len(der) > max_bytes:
        raise _fail("signature larger than allowed", "bundle.signature_size")
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise _fail("CMS is not SignedData", "bundle.signature_syntax")
        sd = info["content"]
        encap = sd["encap_content_info"]
        if encap["content_type"].native != "data" or encap["content"].native is None:
            raise _fail("CMS has no embedded data content", "bundle.signature_syntax")
        content: bytes = encap["content"].native
        cert_ders = [] if isinstance(sd["certificates"], core.Void) else \
            [c.chosen.dump() for c in sd["certificates"] if c.name == "certificate"]
        crl_ders = [] if isinstance(sd["crls"], core.Void) else [c.chosen.dump() for c in sd["crls"] if c.name == "crl"]
        signer_infos = list(sd["signer_infos"])
    except SignatureError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise _fail(f"CMS does not parse: {exc}", "bundle.signature_syntax") from exc
    if not 1 <= len(signer_infos) <= MAX_SIGNERS or len(cert_ders) > MAX_CERTS or len(crl_ders) > MAX_CERTS:
        raise _fail("unexpected number of signers, certificates or CRLs", "bundle.signature_syntax")
    if min_signers <= 1 and len(signer_infos) != 1:
        # Before any chain is built: a device not configured for k-of-n does what rauc 1.8 does.
        raise _fail(f"{len(signer_infos)} signers; only k-of-n devices (min_signers >= 2) accept more than one",
                    "bundle.signer_count")
    try:
        certs = [x509.load_der_x509_certificate(d) for d in cert_ders]
        shipped_crls = [x509.load_der_x509_crl(d) for d in crl_ders]
    except ValueError as exc:
        raise _fail(f"embedded certificate or CRL does not parse: {exc}", "bundle.signature_syntax") from exc

    store = Store(list(keyring.roots))
    verifier = (
        PolicyBuilder()
        .store(store)
        .time(now)
        .max_chain_depth(4)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all())
        .build_client_verifier()
    )
    signers: list[SignerInfo] = []
    used_crls: dict[bytes, x509.CertificateRevocationList] = {}
    for si in signer_infos:
        sid = si["sid"]
        if sid.name != "issuer_and_serial_number":
            raise _fail("signer identified by key id; only issuer+serial is supported", "bundle.signature_syntax")
        issuer_der = sid.chosen["issuer"].dump()
        serial = sid.chosen["serial_number"].native
        leaf = next((c for c in certs if c.serial_number == serial and c.issuer.public_bytes() == issuer_der), None)
        if leaf is None:
            raise _fail("signer certificate not included", "bundle.signer_missing")
        digest_name = si["digest_algorithm"]["algorithm"].native
        attrs = si["signed_attrs"]
        if isinstance(attrs, core.Void):
            raise _fail("CMS signer has no signed attributes", "bundle.signature_syntax")
        ctype = [a for a in attrs if a["type"].native == "content_type"]
        mdig = [a for a in attrs if a["type"].native == "message_digest"]
        if len(ctype) != 1 or len(mdig) != 1 or ctype[0]["values"].native != ["data"]:
            raise _fail("CMS signed attributes lack content-type or message-digest", "bundle.signature_syntax")
        hash_cls = _HASHES.get(digest_name)
        if hash_cls is None:
            raise _fail(f"digest {digest_name} not allowed", "bundle.signature_algorithm")
        h = hashes.Hash(hash_cls())
        h.update(content)
        if not hmac.compare_digest(h.finalize(), mdig[0]["values"].native[0]):
            raise _fail("manifest does not match the signed digest", "bundle.content_digest")
        signed_bytes = b"\x31" + attrs.dump()[1:]  # RFC 5652 5.4: signed over the explicit SET OF
        _verify_raw(leaf, si["signature"].native, signed_bytes,
                    si["signature_algorithm"]["algorithm"].native, digest_name)
        _check_purpose(leaf)
        intermediates = [c for c in certs if c is not leaf]
        try:
            verified = verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            text = str(exc)
            code = "bundle.signer_expired" if "validation time" in text or "expired" in text \
                else "bundle.signer_untrusted"
            raise _fail(f"signer chain rejected: {text}", code) from exc
        chain = tuple(verified.chain)
        issuers = chain[1:]
        best = select_crls([*keyring.crls, *shipped_crls], issuers, now)
        for cert, issuer in itertools.pairwise(chain):
            crl = best.get(issuer.subject.public_bytes())
            if crl is None:
                if require_crl:
                    raise _fail(f"no valid CRL for issuer {issuer.subject.rfc4514_string()}", "bundle.crl_missing")
                continue
            if crl.next_update_utc is not None and crl.next_update_utc < now and require_crl:
                raise _fail("CRL expired", "bundle.crl_expired")
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise _fail(f"certificate {cert.serial_number:x} is revoked", "bundle.signer_revoked")
            used_crls[issuer.subject.public_bytes()] = crl
        signers.append(SignerInfo(leaf.subject.rfc4514_string(), leaf.serial_number, chain, leaf.not_valid_after_utc))
    distinct = {s.chain[0].public_key().public_bytes(serialization.Encoding.DER,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
                for s in signers}
    if len(distinct) < min_signers:
        raise _fail(f"{len(distinct)} distinct signers, {min_signers} required", "bundle.signer_quorum")
    return VerifiedContent(content, tuple(signers), tuple(used_crls.values()))


def signer_time(der: bytes) -> dt.datetime | None:
    """The signing-time attribute, for ``info`` output only (it is signer-chosen, never trusted)."""
    try:
        si = cms.ContentInfo.load(der)["content"]["signer_infos"][0]
        for a in si["signed_attrs"]:
            if a["type"].native == "signing_time":
                value: dt.datetime = a["values"].native[0]
                return value
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return None


__all__ = ["Keyring", "Signer", "SignerInfo", "VerifiedContent", "file_signer",
           "select_crls", "sign_content", "signer_time", "verify_signed_content"]
