"""`camera-provision verify`: fetch a device's TLS chain and check it against the factory CA.

Exit 0 only when the chain validates (RFC 5280 path validation by cryptography's verifier) for
the serial-based name, and the leaf names that serial in its subject. pyOpenSSL is used only to
read the whole presented chain, which the ``ssl`` module of Python 3.11 cannot.
"""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from agent.factory import protocol as p
from provisioning.errors import DeviceUnreachable, ProvisionError

MAX_CHAIN = 8


class VerifyFailed(ProvisionError):
    code = "provision.verify_failed"
    status = 400


def fetch_chain(
    host: str, port: int, server_name: str | None, timeout_s: float = 10.0
) -> tuple[list[x509.Certificate], str]:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_NONE)  # validation is done below, against the given CA only
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise DeviceUnreachable(f"cannot connect to {host}:{port}: {exc.strerror}") from exc
    try:
        conn = SSL.Connection(ctx, sock)
        if server_name:
            conn.set_tlsext_host_name(server_name.encode())
        conn.set_connect_state()
        sock.setblocking(True)
        try:
            conn.do_handshake()
        except SSL.Error as exc:
            raise DeviceUnreachable(f"TLS handshake failed: {exc}") from exc
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        version = conn.get_protocol_version_name()
        conn.shutdown()
    finally:
        sock.close()
    if not chain or len(chain) > MAX_CHAIN:
        raise VerifyFailed("device presented no usable chain", code="provision.verify_no_chain")
    return list(chain), version


def verify_chain(
    chain: list[x509.Certificate], anchors: list[x509.Certificate], now: dt.datetime, serial: str | None
) -> dict[str, Any]:
    leaf = chain[0]
    subject_serials = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
    if len(subject_serials) != 1:
        raise VerifyFailed("leaf certificate names no device serial", code="provision.verify_no_serial")
    found = subject_serials[0]
    if serial is not None and found != serial:
        raise VerifyFailed(f"device is {found}, expected {serial}", code="provision.verify_wrong_serial")
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(anchors))
        .time(now)
        .build_server_verifier(x509.DNSName(p.tls_hostname(found)))
    )
    try:
        path = verifier.verify(leaf, chain[1:])
    except verification.VerificationError as exc:
        raise VerifyFailed(f"chain does not validate: {exc}", code="provision.verify_invalid") from exc
    return {
        "serial": found,
        "hostname": p.tls_hostname(found),
        "leaf_sha256": p.cert_fingerprint(leaf),
        "not_after": leaf.not_valid_after_utc.isoformat(),
        "path": [c.subject.rfc4514_string() for c in path],
    }


def verify_device(host: str, port: int, ca_file: Path, serial: str | None, now: dt.datetime) -> dict[str, Any]:
    anchors = x509.load_pem_x509_certificates(ca_file.read_bytes())
    name = p.tls_hostname(serial) if serial else None
    chain, version = fetch_chain(host, port, name)
    report = verify_chain(chain, anchors, now, serial)
    report["tls_version"] = version
    return report
