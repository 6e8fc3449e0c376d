"""Attack table: each attempt is refused, and the device or the station audits it."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.factory import protocol as p
from agent.factory.errors import FactoryInvalid
from agent.identity import provisioned
from provisioning import certs
from provisioning.client import DeviceClient
from provisioning.db import SqliteRepository
from provisioning.errors import DeviceInvalid, DeviceRefused, DeviceUnreachable, JobRefused
from provisioning.pki import StationPki, load_signer
from provisioning.station import Job, Station
from tests.provisioning.helpers import MODEL, make_pki, start_device

NOW = dt.datetime.now(dt.UTC)


def _client_ctx(cert_pem: bytes, key: ec.EllipticCurvePrivateKey, tmp: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    (tmp / "c.pem").write_bytes(cert_pem)
    (tmp / "c.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx.load_cert_chain(tmp / "c.pem", tmp / "c.key")
    return ctx


def _no_cert_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def test_station_certificate_from_another_pki_is_refused(tmp_path: Path, shared_pki: Path) -> None:
    dev = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "SN0000100")
    rogue = make_pki(tmp_path / "rogue")  # a complete, valid PKI - just not the device's anchor
    with pytest.raises(DeviceUnreachable):
        async with DeviceClient("127.0.0.1", dev.port, StationPki.load(rogue).client_ssl_context()) as c:
            await c.info()
    assert [e.fields.get("details") for e in dev.audited("factory.connect", "denied")]
    assert "tls" in json.dumps(dev.audited("factory.connect", "denied")[0].fields)


async def test_no_client_certificate_is_refused(tmp_path: Path, shared_pki: Path) -> None:
    dev = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "SN0000101")
    with pytest.raises(DeviceUnreachable):
        async with DeviceClient("127.0.0.1", dev.port, _no_cert_ctx()) as c:
            await c.info()
    assert dev.audited("factory.connect", "denied")


async def test_factory_issued_non_station_certificate_is_refused(tmp_path: Path, shared_pki: Path) -> None:
    """A camera's own IDevID chains to the factory CA too; without the station EKU it gets nothing."""
    dev = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "SN0000102")
    signer = load_signer(shared_pki)
    issuing = x509.load_pem_x509_certificate((shared_pki / "issuing-ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN0000999")]))
        .sign(key, hashes.SHA256())
    )
    idevid = certs.idevid_certificate(signer, issuing, csr, "SN0000999", MODEL, certs.Policy(oui="0A1B2C"), NOW)
    ctx = _client_ctx(
        idevid.public_bytes(serialization.Encoding.PEM) + issuing.public_bytes(serialization.Encoding.PEM),
        key,
        tmp_path,
    )
    with pytest.raises((DeviceRefused, DeviceUnreachable)):
        async with DeviceClient("127.0.0.1", dev.port, ctx) as c:
            await c.keys("SN0000102")
    denied = dev.audited("factory.connect", "denied")
    assert denied and "factory.not_station" in json.dumps(denied[0].fields)
    assert not dev.audited("factory.keys", "success")


async def _drive_to_installed(
    dev_port: int, station: StationPki, serial: str
) -> tuple[DeviceClient, dict[str, x509.Certificate]]:
    client = DeviceClient("127.0.0.1", dev_port, station.client_ssl_context())
    await client.__aenter__()
    csrs = await client.keys(serial)
    issued = {
        "idevid": certs.idevid_certificate(
            station.signer,
            station.issuing,
            certs.check_csr(csrs["idevid"], "idevid", serial),
            serial,
            MODEL,
            station.policy,
            NOW,
        ),
        "tls": certs.tls_certificate(
            station.signer, station.issuing, certs.check_csr(csrs["tls"], "tls", serial), serial, station.policy, NOW
        ),
    }
    chain = station.chain_pem.decode()
    await client.install({k: c.public_bytes(serialization.Encoding.PEM).decode() + chain for k, c in issued.items()})
    return client, issued


async def test_replayed_challenge_is_refused(tmp_path: Path, shared_pki: Path) -> None:
    dev = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "SN0000103")
    client, issued = await _drive_to_installed(dev.port, StationPki.load(shared_pki, "station-1"), "SN0000103")
    nonce = secrets.token_bytes(32)
    sigs = await client.challenge(nonce)
    p.verify_pop(issued["idevid"], "idevid", nonce, sigs["idevid"])
    with pytest.raises(DeviceRefused) as err:
        await client.challenge(nonce)
    assert err.value.code == "provision.device.factory.replay"
    assert dev.audited("factory.challenge", "denied")
    # And a recorded answer proves nothing about a fresh nonce (station side).
    with pytest.raises(FactoryInvalid):
        p.verify_pop(issued["idevid"], "idevid", secrets.token_bytes(32), sigs["idevid"])
    await client.__aexit__(None, None, None)


async def test_certificate_for_another_key_is_refused(tmp_path: Path, shared_pki: Path) -> None:
    """Mismatched CSR: a certificate whose key is not the one the device generated."""
    dev = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "SN0000104")
    station = StationPki.load(shared_pki, "station-1")
    async with DeviceClient("127.0.0.1", dev.port, station.client_ssl_context()) as client:
        await client.keys("SN0000104")
        other = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN0000104")]))
            .sign(other, hashes.SHA256())
        )
        chain = station.chain_pem.decode()
        bad = {
            "idevid": certs.idevid_certificate(
                station.signer, station.issuing, csr, "SN0000104", MODEL, station.policy, NOW
            ),
            "tls": certs.tls_certificate(station.signer, station.issuing, csr, "SN0000104", station.policy, NOW),
        }
        with pytest.raises(DeviceRefused) as err:
            await client.install(
                {k: c.public_bytes(serialization.Encoding.PEM).decode() + chain for k, c in bad.items()}
            )
    assert err.value.code == "provision.device.factory.wrong_key"
    assert dev.audited("factory.certificates", "denied")


async def test_certificate_from_another_ca_is_refused(tmp_path: Path, shared_pki: Path) -> None:
    dev = await start_device(tmp_path / "dev", shared_pki / "root-ca.pem", "SN0000105")
    station = StationPki.load(shared_pki, "station-1")
    rogue = StationPki.load(make_pki(tmp_path / "rogue"))
    async with DeviceClient("127.0.0.1", dev.port, station.client_ssl_context()) as client:
        csrs = await client.keys("SN0000105")
        forged = {
            "idevid": certs.idevid_certificate(
                rogue.signer,
                rogue.issuing,
                certs.check_csr(csrs["idevid"], "idevid", "SN0000105"),
                "SN0000105",
                MODEL,
                rogue.policy,
                NOW,
            ),
            "tls": certs.tls_certificate(
                rogue.signer,
                rogue.issuing,
                certs.check_csr(csrs["tls"], "tls", "SN0000105"),
                "SN0000105",
                rogue.policy,
                NOW,
            ),
        }
        chain = rogue.chain_pem.decode()
        with pytest.raises(DeviceRefused) as err:
            await client.install(
                {k: c.public_bytes(serialization.Encoding.PEM).decode() + chain for k, c in forged.items()}
            )
    assert err.value.code == "provision.device.factory.chain_invalid"


def test_csr_checks_table() -> None:
    """Station-side CSR checks: proof of possession, key type, subject."""
    good = ec.generate_private_key(ec.SECP256R1())

    def csr(key: object, serial: str) -> str:
        b = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)])
        )
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()  # type: ignore[arg-type]

    certs.check_csr(csr(good, "SN1234"), "tls", "SN1234")
    table = [
        (csr(good, "SN9999"), "provision.csr_subject"),
        (csr(ec.generate_private_key(ec.SECP384R1()), "SN1234"), "provision.csr_key"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "provision.bad_csr"),
        (csr(good, "SN1234")[:200], "provision.bad_csr"),
        ("x" * 5000, "provision.bad_csr"),
    ]
    # A CSR whose signature does not match its key (key swapped after signing).
    pem = csr(good, "SN1234")
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    import base64

    table.append(
        (
            "-----BEGIN CERTIFICATE REQUEST-----\n"
            + base64.encodebytes(bytes(der)).decode()
            + "-----END CERTIFICATE REQUEST-----\n",
            "provision.csr_signature",
        )
    )
    for pem_in, code in table:
        with pytest.raises(DeviceInvalid) as err:
            certs.check_csr(pem_in, "tls", "SN1234")
        assert err.value.code == code, (code, err.value.code)


async def test_duplicate_serial_and_mac_are_refused(tmp_path: Path, shared_pki: Path) -> None:
    repo = SqliteRepository(tmp_path / "f.db")
    station = Station(StationPki.load(shared_pki, "station-1"), repo)
    a = await start_device(tmp_path / "a", shared_pki / "root-ca.pem", "", mac="02:00:00:00:00:01")
    await station.provision(Job("SN0000200", MODEL), "127.0.0.1", a.port, tmp_path / "labels")
    # A second device, presented with a serial the line already used.
    b = await start_device(tmp_path / "b", shared_pki / "root-ca.pem", "", mac="02:00:00:00:00:02")
    with pytest.raises(JobRefused) as err:
        await station.provision(Job("SN0000200", MODEL), "127.0.0.1", b.port, tmp_path / "labels")
    assert err.value.code == "provision.duplicate_serial"
    # A third device whose MAC clones the first one's.
    c = await start_device(tmp_path / "c", shared_pki / "root-ca.pem", "", mac="02:00:00:00:00:01")
    with pytest.raises(JobRefused) as err:
        await station.provision(Job("SN0000201", MODEL), "127.0.0.1", c.port, tmp_path / "labels")
    assert err.value.code == "provision.duplicate_mac"
    refused = [e for e in repo.events() if e["outcome"] == "refused"]
    assert {e["reason"] for e in refused} == {"provision.duplicate_serial", "provision.duplicate_mac"}
    # Neither device got keys, let alone an identity.
    for d in (b, c):
        assert provisioned.load(d.state) is None
        assert not d.audited("factory.keys", "success")
    # Wrong model is refused before anything happens on the device.
    with pytest.raises(JobRefused):
        await station.provision(Job("SN0000202", "OTHER-1"), "127.0.0.1", b.port, tmp_path / "labels")
    repo.close()


async def test_locked_device_refuses_everything(tmp_path: Path, shared_pki: Path) -> None:
    """After lock the port is gone; a device object reached another way refuses every step."""
    repo = SqliteRepository(tmp_path / "f.db")
    station = Station(StationPki.load(shared_pki, "station-1"), repo)
    dev = await start_device(tmp_path / "a", shared_pki / "root-ca.pem", "SN0000300")
    await station.provision(Job("SN0000300", MODEL), "127.0.0.1", dev.port, tmp_path / "labels")
    with pytest.raises(DeviceUnreachable):
        async with DeviceClient("127.0.0.1", dev.port, station.pki.client_ssl_context()) as c:
            await c.info()
    from agent.factory.device import Peer
    from agent.factory.errors import FactoryRefused

    for step in ("keys", "certificates", "challenge", "setup_code", "lock"):
        with pytest.raises(FactoryRefused):
            dev.device.handle(step, {"serial": "SN0000300"}, Peer("station-1", "127.0.0.1"))
    assert len(dev.audited("factory.keys", "denied")) == 1
    repo.close()
