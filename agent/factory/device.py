"""Device side of factory provisioning: the request logic, free of sockets.

``FactoryDevice`` takes decoded JSON requests plus the authenticated station's name and returns
JSON answers; the aiohttp adapter (``server.py``) only does TLS, framing and threading. Every
step is idempotent (asking again returns the same result) and persisted before it answers, so a
station or a device killed at any point resumes where it stopped. Keys are generated here, from
the kernel RNG through OpenSSL, and only ever leave this module sealed.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from agent.auth import claim
from agent.config import DeviceFacts
from agent.devicesecret import DeviceSecretProvider
from agent.errors import AgentError
from agent.factory import protocol as p
from agent.factory import session as sess
from agent.factory.errors import FactoryInvalid, FactoryRefused
from agent.factory.faults import checkpoint
from agent.identity import provisioned
from agent.state import StateDir


class AuditSink(Protocol):
    def append(
        self,
        event: str,
        *,
        outcome: str,
        actor: str | None = None,
        source: str | None = None,
        target: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class Peer:
    station: str  # CN of the verified station certificate
    address: str


_CODE_ALPHABET = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def _chains_digest(chains: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for kind in p.KEY_KINDS:
        h.update(chains.get(kind, "").encode() + b"\0")
    return h.hexdigest()


class FactoryDevice:
    def __init__(
        self,
        state: StateDir,
        secret: DeviceSecretProvider,
        facts: DeviceFacts,
        factory_ca_pem: bytes,
        audit: AuditSink,
        clock: Callable[[], float],
        firmware_sha256: str,
    ) -> None:
        self._state = state
        self._secret = secret
        self._facts = facts
        self._anchor_pem = factory_ca_pem
        self._anchors = x509.load_pem_x509_certificates(factory_ca_pem)
        self._audit = audit
        self._clock = clock
        self._firmware_sha256 = firmware_sha256
        self._sealer = provisioned.KeySealer(secret)
        self._lock = threading.Lock()  # one station request at a time; steps read-modify-write
        self._session = sess.enter(state)

    # --- facts --------------------------------------------------------------------------------
    @property
    def serial(self) -> str:
        return self._facts.serial or self._session.serial

    def _mac(self) -> str:
        if self._facts.mac:
            return p.normalize_mac(self._facts.mac)
        # Host mode has no NIC of its own: a stable locally administered unicast MAC derived from
        # the device secret stands in for the one a board reads from its eFuses.
        raw = bytearray(self._secret.derive("factory-mac", 6))
        raw[0] = (raw[0] | 0x02) & 0xFE
        return ":".join(f"{b:02x}" for b in raw)

    def info(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "mac": self._mac(),
            "model": self._facts.model,
            "firmware_version": self._facts.firmware_version,
            "firmware_sha256": self._firmware_sha256,
            "phase": self._session.phase,
        }

    # --- dispatch -----------------------------------------------------------------------------
    def handle(self, step: str, body: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        """Run one step under the lock; audit every outcome with the precise reason."""
        handler = {
            "keys": self._keys,
            "certificates": self._certificates,
            "challenge": self._challenge,
            "setup_code": self._setup_code,
            "lock": self._lock_device,
        }[step]
        with self._lock:
            if provisioned.record_path(self._state).exists():
                self._audit_step(step, "denied", peer, {"reason": "device is locked"})
                raise FactoryRefused("device is locked", code="factory.locked")
            try:
                result, details = handler(body, peer)
            except AgentError as exc:
                self._audit_step(
                    step,
                    "denied" if exc.status < 500 else "failure",
                    peer,
                    {"reason": exc.code, "message": exc.message},
                )
                raise
            self._audit_step(step, "success", peer, details)
            checkpoint(f"device.{step}")
            return result

    def _audit_step(self, step: str, outcome: str, peer: Peer, details: Mapping[str, Any]) -> None:
        self._audit.append(
            f"factory.{step}",
            outcome=outcome,
            actor=peer.station,
            source=peer.address,
            target=self.serial or None,
            details=dict(details),
        )

    def _save(self) -> None:
        sess.save(self._state, self._session)

    # --- step 3: keys -------------------------------------------------------------------------
    def _keys(self, body: Mapping[str, Any], peer: Peer) -> tuple[dict[str, Any], dict[str, Any]]:
        requested = p.check_serial(body.get("serial"))
        if self._facts.serial and requested != self._facts.serial:
            raise FactoryRefused("serial does not match the device", code="factory.serial_mismatch")
        if self._session.serial and requested != self._session.serial:
            raise FactoryRefused("device already has another serial", code="factory.serial_mismatch")
        s = self._session
        if not s.sealed_keys:
            s.serial = requested if not self._facts.serial else ""
            for kind in p.KEY_KINDS:
                # OpenSSL's RNG, seeded from getrandom(): the kernel RNG (ER-01 1.9).
                key = ec.generate_private_key(ec.SECP256R1())
                s.sealed_keys[kind] = p.b64e(self._sealer.seal_pending(kind, key))
                s.csrs[kind] = self._csr(kind, key).public_bytes(serialization.Encoding.PEM).decode()
            s.phase = "keys"
            s.station = peer.station
            self._save()
        fps = {
            kind: p.key_fingerprint(p.ec_public_key(p.load_csr(s.csrs[kind]).public_key(), kind))
            for kind in p.KEY_KINDS
        }
        return {"csrs": dict(s.csrs)}, {"key_fingerprints": fps}

    def _csr(self, kind: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.SERIAL_NUMBER, self.serial),
                x509.NameAttribute(NameOID.COMMON_NAME, p.tls_hostname(self.serial) if kind == "tls" else self.serial),
            ]
        )
        return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())

    def _pending_key(self, kind: str) -> ec.EllipticCurvePrivateKey:
        return self._sealer.unseal_pending(kind, self._session.sealed_key(kind))

    # --- step 4: certificates -------------------------------------------------------------------
    def _certificates(self, body: Mapping[str, Any], peer: Peer) -> tuple[dict[str, Any], dict[str, Any]]:
        s = self._session
        if not s.sealed_keys:
            raise FactoryRefused("no keys generated yet", code="factory.wrong_step")
        chains: dict[str, str] = {}
        fps: dict[str, str] = {}
        for kind in p.KEY_KINDS:
            chain_pem = body.get(f"{kind}_chain")
            certs = p.load_chain(chain_pem)
            self._verify_chain(kind, certs)
            pending = self._pending_key(kind).public_key()
            if p.key_fingerprint(p.ec_public_key(certs[0].public_key(), kind)) != p.key_fingerprint(pending):
                raise FactoryInvalid(f"{kind} certificate is not for this device's key", code="factory.wrong_key")
            assert isinstance(chain_pem, str)
            chains[kind] = chain_pem
            fps[kind] = p.cert_fingerprint(certs[0])
        if chains != s.chains:
            s.chains = chains
            s.phase = "certified"
            s.proven_for = ""
            s.code_for = ""
            self._save()
        return {"installed": fps}, {"certificate_fingerprints": fps}

    def _verify_chain(self, kind: str, certs: list[x509.Certificate]) -> None:
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        builder = verification.PolicyBuilder().store(verification.Store(self._anchors)).time(now)
        try:
            if kind == "tls":
                verifier = builder.build_server_verifier(x509.DNSName(p.tls_hostname(self.serial)))
                verifier.verify(certs[0], certs[1:])
            else:
                builder.build_client_verifier().verify(certs[0], certs[1:])
        except verification.VerificationError as exc:
            raise FactoryInvalid(f"{kind} chain does not verify: {exc}", code="factory.chain_invalid") from exc
        serials = certs[0].subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        if len(serials) != 1 or serials[0].value != self.serial:
            raise FactoryInvalid(f"{kind} certificate names another serial", code="factory.serial_mismatch")

    # --- step 4b: proof of possession ---------------------------------------------------------------
    def _challenge(self, body: Mapping[str, Any], peer: Peer) -> tuple[dict[str, Any], dict[str, Any]]:
        s = self._session
        if not s.chains:
            raise FactoryRefused("no certificates installed", code="factory.wrong_step")
        nonce = p.b64d(body.get("nonce"), max_len=p.NONCE_LEN, what="nonce")
        if len(nonce) != p.NONCE_LEN:
            raise FactoryInvalid("nonce must be 32 bytes", code="factory.bad_challenge")
        tag = hashlib.sha256(nonce).hexdigest()
        if tag in s.nonces:
            raise FactoryRefused("challenge was already answered", code="factory.replay")
        sigs = {}
        for kind in p.KEY_KINDS:
            cert = x509.load_pem_x509_certificates(s.chains[kind].encode())[0]
            msg = p.pop_message(kind, nonce, cert.public_bytes(serialization.Encoding.DER))
            sigs[kind] = p.b64e(self._pending_key(kind).sign(msg, ec.ECDSA(hashes.SHA256())))
        s.nonces.append(tag)
        s.proven_for = _chains_digest(s.chains)
        if s.phase == "certified":
            s.phase = "proven"
        self._save()
        return {"signatures": sigs}, {"nonce_sha256": tag}

    # --- step 5: setup code ---------------------------------------------------------------------
    def _setup_code(self, body: Mapping[str, Any], peer: Peer) -> tuple[dict[str, Any], dict[str, Any]]:
        s = self._session
        if not s.chains or s.proven_for != _chains_digest(s.chains):
            raise FactoryRefused("identity not proven yet", code="factory.wrong_step")
        code = body.get("code")
        if not isinstance(code, str) or len(code) > 64:
            raise FactoryInvalid("setup code missing", code="factory.bad_code")
        normal = claim.normalize_code(code)
        if len(normal) != claim.CODE_CHARS or not set(normal) <= _CODE_ALPHABET:
            raise FactoryInvalid("setup code has the wrong format", code="factory.bad_code")
        # Only the keyed hash is stored (agent.auth.claim); a host-mode code is void from now on.
        claim.install_setup_code(self._state, self._secret, normal)
        self._state.setup_code_file.unlink(missing_ok=True)
        s.code_for = _chains_digest(s.chains)
        s.phase = "coded"
        self._save()
        return {"installed": True}, {}

    # --- step 6: lock ------------------------------------------------------------------------------
    def _lock_device(self, body: Mapping[str, Any], peer: Peer) -> tuple[dict[str, Any], dict[str, Any]]:
        s = self._session
        digest = _chains_digest(s.chains)
        if not s.chains or s.proven_for != digest or s.code_for != digest:
            raise FactoryRefused("provisioning is not complete", code="factory.wrong_step")
        idevid = x509.load_pem_x509_certificates(s.chains["idevid"].encode())[0]
        expected = body.get("idevid_sha256")
        if not isinstance(expected, str) or expected != p.cert_fingerprint(idevid):
            raise FactoryRefused("station confirms another identity", code="factory.identity_mismatch")
        serial = self.serial
        record = provisioned.ProvisionedIdentity(
            serial=serial,
            mac=self._mac(),
            model=self._facts.model,
            idevid_chain_pem=s.chains["idevid"],
            tls_chain_pem=s.chains["tls"],
            factory_ca_pem=self._anchor_pem.decode(),
            sealed_idevid_key=self._sealer.seal("idevid", serial, self._pending_key("idevid")),
            sealed_tls_key=self._sealer.seal("tls", serial, self._pending_key("tls")),
            locked_at=self._clock(),
            station=peer.station,
        )
        provisioned.commit(self._state, record)  # the commit point: factory state ends here
        checkpoint("device.lock_committed")
        sess.discard(self._state)
        return {"locked": True}, {"idevid_sha256": expected}

    def audit_denied(self, event: str, source: str | None, reason: str) -> None:
        self._audit.append(event, outcome="denied", source=source, details={"reason": reason})
