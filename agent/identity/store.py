"""Persistent device identity: keys sealed at rest, certificates in the clear, one SSL context.

Files under ``StateDir.identity_dir`` (0700, files 0600):
    local-ca.pem, local-ca-key.sealed    device-local CA (self-issued identity only)
    tls-chain.pem, tls-key.sealed        the self-issued TLS server chain and key
    provisioned.json                     the factory identity (agent.identity.provisioned); once it
                                         exists it is served instead of the self-issued one
Private keys are sealed with ``derive("identity-keys")`` (AES-256-GCM, bound to the file's role),
so a copy of the data partition without the device secret reveals no key (ER-01 1.5).
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.config import DeviceFacts
from agent.devicesecret import DeviceSecretProvider
from agent.errors import StateError
from agent.identity import provisioned, selfissued
from agent.sealing import seal, unseal
from agent.state import StateDir, atomic_write
from agent.tlsconfig import load_chain_from_memory, server_context

KEY_PURPOSE = "identity-keys"


class IdentityStore:
    def __init__(
        self,
        state: StateDir,
        secret: DeviceSecretProvider,
        device: DeviceFacts,
        clock: Callable[[], float],
    ) -> None:
        self._state = state
        self._dir = state.identity_dir
        self._key = secret.derive(KEY_PURPOSE)
        self._device = device
        self._clock = clock
        self._listeners: list[Callable[[], None]] = []
        self._ctx: ssl.SSLContext | None = None
        self._sealer = provisioned.KeySealer(secret)
        self._factory: provisioned.ProvisionedIdentity | None = None
        self._factory_loaded = False

    def factory_identity(self) -> provisioned.ProvisionedIdentity | None:
        if not self._factory_loaded:
            self._factory = provisioned.load(self._state)
            self._factory_loaded = True
        return self._factory

    # --- sealed key files -------------------------------------------------------------------
    def save_private_key(self, name: str, key: ec.EllipticCurvePrivateKey) -> None:
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(self._dir / f"{name}.sealed", seal(self._key, der, f"identity:{name}".encode()))

    def load_private_key(self, name: str) -> ec.EllipticCurvePrivateKey:
        blob = (self._dir / f"{name}.sealed").read_bytes()
        der = unseal(self._key, blob, f"identity:{name}".encode())
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise StateError(f"{name} is not an EC key", code="identity.key_type")
        return key

    def _path(self, name: str) -> Path:
        return self._dir / name

    # --- public interface --------------------------------------------------------------------
    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)

    def is_factory_provisioned(self) -> bool:
        return self.factory_identity() is not None

    def ensure(self) -> None:
        """Create or renew the self-issued identity when no factory identity is installed."""
        if self.is_factory_provisioned():
            return
        now = self.now()
        serial = self._device.serial or "unprovisioned"
        if not self._path("local-ca.pem").exists() or not self._path("local-ca-key.sealed").exists():
            ca_key = selfissued.new_key()
            ca_cert = selfissued.build_local_ca(ca_key, serial, now)
            self.save_private_key("local-ca-key", ca_key)
            atomic_write(self._path("local-ca.pem"), ca_cert.public_bytes(serialization.Encoding.PEM))
            self._issue_leaf(ca_key, ca_cert, now)
            return
        chain = self._path("tls-chain.pem")
        if not chain.exists() or not self._path("tls-key.sealed").exists():
            self._issue_leaf(self.load_private_key("local-ca-key"), self._load_local_ca(), now)
            return
        leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
        if selfissued.needs_renewal(leaf, now):
            self._issue_leaf(self.load_private_key("local-ca-key"), self._load_local_ca(), now)

    def _load_local_ca(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self._path("local-ca.pem").read_bytes())

    def _issue_leaf(self, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, now: dt.datetime) -> None:
        leaf_key = selfissued.new_key()
        leaf = selfissued.build_leaf(ca_key, ca_cert, leaf_key, self._device.serial or "unprovisioned", now)
        self.save_private_key("tls-key", leaf_key)
        pem = leaf.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
        atomic_write(self._path("tls-chain.pem"), pem)

    def certificate_chain_pem(self) -> bytes:
        factory = self.factory_identity()
        if factory is not None:
            return factory.tls_chain_pem.encode()
        return self._path("tls-chain.pem").read_bytes()

    def idevid_chain_pem(self) -> bytes | None:
        """The IEEE 802.1AR IDevID chain (None before factory provisioning)."""
        factory = self.factory_identity()
        return factory.idevid_chain_pem.encode() if factory is not None else None

    def trust_anchor_pem(self) -> bytes:
        """The CA a client should trust for this device: factory CA once provisioned."""
        factory = self.factory_identity()
        if factory is not None:
            return factory.factory_ca_pem.encode()
        return self._path("local-ca.pem").read_bytes()

    def _key_pem(self) -> bytes:
        factory = self.factory_identity()
        if factory is not None:
            key = self._sealer.unseal("tls", factory.serial, factory.sealed_tls_key)
        else:
            key = self.load_private_key("tls-key")
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def server_ssl_context(self) -> ssl.SSLContext:
        """One long-lived context; ``reload`` swaps its certificate in place for new handshakes."""
        if self._ctx is None:
            self.ensure()
            self._ctx = server_context(self.certificate_chain_pem(), self._key_pem())
        return self._ctx

    def reload(self) -> None:
        """Called after the identity files changed (factory install, renewal)."""
        self._factory_loaded = False
        if self._ctx is not None:
            load_chain_from_memory(self._ctx, self.certificate_chain_pem(), self._key_pem())
        for cb in list(self._listeners):
            cb()

    def on_change(self, cb: Callable[[], None]) -> None:
        self._listeners.append(cb)
