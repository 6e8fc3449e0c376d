"""The per-device flow of a factory station.

Order (each step idempotent, so a rerun after a crash of either side resumes or rolls back):
  1. mutual TLS to the device's factory endpoint (``DeviceClient``);
  2. read serial / MAC / model, check them against the job, claim the job in the database
     (duplicate serial or MAC refused by the database's unique constraints);
  3. the device makes its keys and returns CSRs; we check proof of possession and subject;
  4. issue (or, on resume, re-use the recorded certificate for the same key) the IDevID and TLS
     certificates, install the chains, verify a signed challenge over a fresh nonce;
  5. a fresh setup code: label first, then the device (which keeps only a keyed hash);
  6. lock, then confirm the factory port is gone, then mark the job locked.
Pure checks live in ``certs`` and ``agent.factory.protocol``; this module sequences I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.auth.claim import generate_setup_code
from agent.factory import protocol as p
from agent.factory.errors import FactoryInvalid
from agent.factory.faults import checkpoint
from provisioning import certs, label
from provisioning.client import DeviceClient
from provisioning.db import CertRow, Repository
from provisioning.errors import DeviceInvalid, DeviceUnreachable, JobRefused, ProvisionError
from provisioning.pki import StationPki


@dataclass(frozen=True)
class Job:
    serial: str
    model: str
    mac: str | None = None  # when given, the device must report exactly this MAC
    operator: str = "operator"


@dataclass
class Outcome:
    serial: str
    mac: str = ""
    status: str = "failed"
    certificates: dict[str, str] = field(default_factory=dict)  # kind -> SHA-256
    label_files: dict[str, Path] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def _port_closed(host: str, port: int, ctx: ssl.SSLContext, attempts: int = 50) -> bool:
    """True once nothing speaks the factory protocol on ``host:port`` any more.

    A bare TCP connect is not enough: NAT and port forwarding (QEMU's user-mode network, a
    fixture's proxy) accept the TCP connection themselves and then close it. So the probe is a TLS
    handshake with the station's own credentials: refused, reset or closed before the server said
    anything means closed; a completed handshake, or a TLS server that answers at all, means open.
    """
    for _ in range(attempts):
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=None), 10
            )
        except (ConnectionRefusedError, ConnectionResetError, ssl.SSLEOFError, asyncio.IncompleteReadError):
            return True
        except ssl.SSLError as exc:
            if "EOF" in str(exc) or "UNEXPECTED_EOF" in str(exc):
                return True
            await asyncio.sleep(0.1)
            continue
        except (OSError, TimeoutError):
            return True
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        await asyncio.sleep(0.1)
    return False


async def _tls_leaf_sha256(host: str, port: int, ctx: ssl.SSLContext, server_name: str) -> str | None:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_name), 10
        )
    except (OSError, ssl.SSLError, TimeoutError):
        return None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return p.sha256_hex(der) if der else None
    finally:
        writer.close()


class Station:
    def __init__(
        self,
        pki: StationPki,
        repo: Repository,
        *,
        clock: Callable[[], float] = time.time,
        lease_s: float = 300.0,
    ) -> None:
        self.pki = pki
        self.repo = repo
        self._clock = clock
        self._lease_s = lease_s
        self._ssl = pki.client_ssl_context()

    @property
    def name(self) -> str:
        return self.pki.name

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def provision(
        self, job: Job, host: str, port: int, label_dir: Path, *, https_port: int | None = None
    ) -> Outcome:
        p.check_serial(job.serial)
        p.check_model(job.model)
        out = Outcome(job.serial)
        try:
            await self._run(job, host, port, label_dir, https_port, out)
        except ProvisionError as exc:
            await self._db(
                self.repo.event,
                job.serial,
                out.mac or None,
                "provision",
                "failure" if not isinstance(exc, JobRefused) else "refused",
                exc.code,
                self.name,
                job.operator,
                self._clock(),
            )
            raise
        except FactoryInvalid as exc:
            await self._db(
                self.repo.event,
                job.serial,
                out.mac or None,
                "provision",
                "failure",
                exc.code,
                self.name,
                job.operator,
                self._clock(),
            )
            raise DeviceInvalid(exc.message, code="provision.device_invalid") from exc
        return out

    async def _run(self, job: Job, host: str, port: int, label_dir: Path, https_port: int | None, out: Outcome) -> None:
        t0 = time.perf_counter()
        record = await self._db(self.repo.get_device, job.serial)
        if record is not None and record.status == "locked":
            raise JobRefused(f"serial {job.serial} is already provisioned", code="provision.duplicate_serial")
        try:
            async with DeviceClient(host, port, self._ssl) as dev:
                await self._with_device(dev, job, host, port, label_dir, out)
        except DeviceUnreachable:
            # The one step that takes the endpoint away is the lock. A station killed after sending
            # it finds nothing listening; confirm through the device's HTTPS identity instead.
            if record is None or record.step != "lock_sent" or https_port is None:
                raise
            await self._confirm_by_https(job, host, https_port, out)
        out.timings_ms["total"] = (time.perf_counter() - t0) * 1000

    async def _with_device(
        self, dev: DeviceClient, job: Job, host: str, port: int, label_dir: Path, out: Outcome
    ) -> None:
        # --- 2. facts and the job ---------------------------------------------------------------
        info = await dev.info()
        if info.serial and info.serial != job.serial:
            raise JobRefused(
                f"device reports serial {info.serial}, job says {job.serial}", code="provision.serial_mismatch"
            )
        if info.model != job.model:
            raise JobRefused(
                f"device reports model {info.model}, job says {job.model}", code="provision.model_mismatch"
            )
        if job.mac is not None and p.normalize_mac(job.mac) != info.mac:
            raise JobRefused(f"device reports MAC {info.mac}, job says {job.mac}", code="provision.mac_mismatch")
        out.mac = info.mac
        await self._db(
            self.repo.claim_device,
            job.serial,
            info.mac,
            job.model,
            self.name,
            job.operator,
            self._clock(),
            self._lease_s,
            info.firmware_version,
            info.firmware_sha256,
        )
        checkpoint("station.claimed")

        # --- 3. keys made on the device -------------------------------------------------------------
        csr_pems = await dev.keys(job.serial)
        await self._db(self.repo.set_step, job.serial, "keys", self.name, self._clock())
        checkpoint("station.keys")
        csrs = {kind: certs.check_csr(csr_pems[kind], kind, job.serial) for kind in p.KEY_KINDS}

        # --- 4. certificates -----------------------------------------------------------------------
        issued = {kind: await self._certificate_for(kind, csrs[kind], job) for kind in p.KEY_KINDS}
        await self._db(self.repo.set_step, job.serial, "issued", self.name, self._clock())
        checkpoint("station.issued")
        chain = self.pki.chain_pem.decode()
        await dev.install({kind: _pem(cert) + chain for kind, cert in issued.items()})
        checkpoint("station.installed")
        nonce = secrets.token_bytes(p.NONCE_LEN)
        sigs = await dev.challenge(nonce)
        for kind in p.KEY_KINDS:
            try:
                p.verify_pop(issued[kind], kind, nonce, sigs[kind])
            except FactoryInvalid as exc:
                raise DeviceInvalid(exc.message, code="provision.pop_failed") from exc
        await self._db(self.repo.set_step, job.serial, "proven", self.name, self._clock())
        checkpoint("station.proven")
        out.certificates = {kind: p.cert_fingerprint(cert) for kind, cert in issued.items()}

        # --- 5. setup code: the label is written before the device learns the code ----------------
        code = generate_setup_code()
        rendered = await asyncio.to_thread(label.render, label.Label(job.model, job.serial, info.mac, code))
        out.label_files = await asyncio.to_thread(label.write, label_dir, job.serial, rendered)
        checkpoint("station.label")
        await dev.setup_code(code)
        del code, rendered
        checkpoint("station.setup_code")

        # --- 6. lock ---------------------------------------------------------------------------------
        await self._db(self.repo.set_step, job.serial, "lock_sent", self.name, self._clock())
        await dev.lock(out.certificates["idevid"])
        checkpoint("station.lock_sent")
        if not await _port_closed(host, port, self._ssl):
            raise DeviceInvalid("factory port still open after lock", code="provision.lock_not_closed")
        await self._db(self.repo.mark_locked, job.serial, self.name, self._clock())
        await self._db(
            self.repo.event, job.serial, info.mac, "lock", "success", None, self.name, job.operator, self._clock()
        )
        out.status = "locked"

    async def _certificate_for(self, kind: str, csr: x509.CertificateSigningRequest, job: Job) -> x509.Certificate:
        key_fp = p.key_fingerprint(p.ec_public_key(csr.public_key(), kind))
        existing: CertRow | None = await self._db(self.repo.cert_for_key, key_fp)
        if existing is not None:
            if existing.device_serial != job.serial or existing.kind != kind or existing.status == "revoked":
                # A key that is already certified for anything else: a cloned or replayed CSR.
                raise JobRefused("device key is already certified elsewhere", code="provision.duplicate_key")
            return x509.load_pem_x509_certificate(existing.cert_pem.encode())  # resume: same key, same cert
        now = dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)
        signer, issuer, policy = self.pki.signer, self.pki.issuing, self.pki.policy
        if kind == "idevid":
            cert = await asyncio.to_thread(
                certs.idevid_certificate, signer, issuer, csr, job.serial, job.model, policy, now
            )
        else:
            cert = await asyncio.to_thread(certs.tls_certificate, signer, issuer, csr, job.serial, policy, now)
        row = CertRow(
            cert_serial=format(cert.serial_number, "x"),
            device_serial=job.serial,
            kind=kind,
            fingerprint=p.cert_fingerprint(cert),
            key_fingerprint=key_fp,
            not_after=cert.not_valid_after_utc.isoformat(),
            cert_pem=_pem(cert),
            status="issued",
        )
        await self._db(self.repo.replace_cert, row, self.name, self._clock())
        return cert

    async def _confirm_by_https(self, job: Job, host: str, https_port: int, out: Outcome) -> None:
        live = {c.kind: c for c in await self._db(self.repo.live_certs, job.serial)}
        if "tls" not in live:
            raise DeviceUnreachable("device unreachable and no certificate recorded")
        ctx = ssl.create_default_context(cadata=self.pki.root.public_bytes(serialization.Encoding.PEM).decode())
        seen = await _tls_leaf_sha256(host, https_port, ctx, p.tls_hostname(job.serial))
        if seen != live["tls"].fingerprint:
            raise DeviceUnreachable("device unreachable and its HTTPS identity is not the recorded one")
        record = await self._db(self.repo.get_device, job.serial)
        await self._db(
            self.repo.claim_device,
            job.serial,
            record.mac,
            job.model,
            self.name,
            job.operator,
            self._clock(),
            self._lease_s,
        )
        await self._db(self.repo.mark_locked, job.serial, self.name, self._clock())
        await self._db(
            self.repo.event,
            job.serial,
            record.mac,
            "lock",
            "success",
            "confirmed by HTTPS identity",
            self.name,
            job.operator,
            self._clock(),
        )
        out.mac = record.mac
        out.status = "locked"
        out.certificates = {kind: c.fingerprint for kind, c in live.items()}
