"""The management plane's TLS as a lab sees it (ER-01 2.2/2.3, EN 303 645 5.5), against a real
`camera-agent run` process and real clients: openssl s_client, curl-free raw sockets, testssl.

Every refusal test first shows, against a permissive `openssl s_server` started here, that the
very same client command DOES connect - so a refusal is the agent's doing, not the client's
(Debian's OpenSSL refuses TLS 1.0 and SHA-1 suites itself unless told @SECLEVEL=0).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.agentharness import AgentProcess, free_port, start_agent_process
from tests.conftest import need

HANDSHAKE_TIMEOUT_S = 20
ALL_TLS13 = ("TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:"
             "TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256")


@dataclass
class Handshake:
    ok: bool
    protocol: str | None
    cipher: str | None
    output: str


def s_client(port: int, *args: str, extra_input: bytes = b"") -> Handshake:
    """One handshake with openssl s_client; ``-brief`` prints the negotiated protocol and suite."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-brief", *args]
    out = subprocess.run(cmd, input=extra_input, capture_output=True, timeout=HANDSHAKE_TIMEOUT_S)
    text = (out.stdout + out.stderr).decode(errors="replace")
    proto = re.search(r"Protocol version: (\S+)", text)
    suite = re.search(r"Ciphersuite: (\S+)", text)
    ok = out.returncode == 0 and proto is not None and suite is not None
    return Handshake(ok, proto.group(1) if proto else None, suite.group(1) if suite else None, text)


@pytest.fixture(scope="module")
def agent_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    need("openssl")
    proc = start_agent_process(tmp_path_factory.mktemp("tls") / "state")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def permissive_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A control TLS server that accepts everything OpenSSL can do (EC key, like the agent's)."""
    need("openssl")
    d = tmp_path_factory.mktemp("control")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost", "-days", "1"],
                   check=True, capture_output=True, timeout=30)
    port = free_port()
    proc = subprocess.Popen(["openssl", "s_server", "-accept", str(port), "-cert", str(cert), "-key", str(key),
                             "-cipher", "ALL:COMPLEMENTOFALL:@SECLEVEL=0", "-ciphersuites", ALL_TLS13, "-quiet"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                threading.Event().wait(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- protocol versions and suites ----------------------------------------------------------------

# (name, s_client arguments). Each must connect to the permissive server and be refused by the agent.
REFUSED_TABLE: list[tuple[str, list[str]]] = [
    ("TLS 1.0", ["-tls1", "-cipher", "ALL:@SECLEVEL=0"]),
    ("TLS 1.1", ["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"]),
    ("TLS 1.2 CBC-SHA1 (LUCKY13 class)", ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"]),
    ("TLS 1.2 CBC-SHA256", ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"]),
    ("TLS 1.2 CBC-SHA384", ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA384"]),
    ("TLS 1.2 CAMELLIA-CBC", ["-tls1_2", "-cipher", "ECDHE-ECDSA-CAMELLIA128-SHA256"]),
    ("TLS 1.2 AES-CCM8 (short tag)", ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-CCM8"]),
    ("TLS 1.2 ARIA-GCM (not in policy)", ["-tls1_2", "-cipher", "ECDHE-ECDSA-ARIA128-GCM-SHA256"]),
    ("TLS 1.2 anonymous ECDH", ["-tls1_2", "-cipher", "AECDH-AES128-SHA:@SECLEVEL=0"]),
    ("TLS 1.2 NULL cipher", ["-tls1_2", "-cipher", "ECDHE-ECDSA-NULL-SHA:@SECLEVEL=0"]),
    ("TLS 1.3 AES-CCM8", ["-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_8_SHA256"]),
]

# Written from the policy, not read from agent/tlsconfig.py: with the device's EC key these are
# the only TLS 1.2 suites that may be negotiated (ECDHE + AEAD), and TLS 1.3 must offer its AEADs.
ACCEPTED_TLS12 = {"ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"}
ACCEPTED_TLS13 = {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"}


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state owned by ``pid`` (sockets found through /proc/PID/fd)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_agent_listens_only_on_its_tls_ports(agent_proc: AgentProcess) -> None:
    ports = listening_ports(agent_proc.proc.pid)
    assert agent_proc.https_port in ports, ports
    extra = ports - {agent_proc.https_port, agent_proc.rtsps_port}
    assert not extra, f"unexpected listeners (unused features must be off): {sorted(extra)}"


@pytest.mark.parametrize(("name", "args"), REFUSED_TABLE, ids=[n for n, _ in REFUSED_TABLE])
def test_weak_protocol_or_suite_refused(agent_proc: AgentProcess, permissive_server: int,
                                        name: str, args: list[str]) -> None:
    control = s_client(permissive_server, *args)
    assert control.ok, f"control: the client cannot even offer {name}:\n{control.output}"
    for port in sorted(listening_ports(agent_proc.proc.pid)):
        got = s_client(port, *args)
        assert not got.ok, f"port {port} accepted {name}: {got.protocol} {got.cipher}"


def test_only_ecdhe_aead_suites_in_tls12(agent_proc: AgentProcess) -> None:
    listed = subprocess.run(["openssl", "ciphers", "-s", "-tls1_2", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
                            capture_output=True, text=True, check=True, timeout=30).stdout.strip().split(":")
    assert len(listed) > 50, listed  # the local OpenSSL really offers the weak ones one by one

    def attempt(suite: str) -> tuple[str, Handshake]:
        return suite, s_client(agent_proc.https_port, "-tls1_2", "-cipher", f"{suite}:@SECLEVEL=0")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(attempt, listed))
    accepted = {s for s, h in results.items() if h.ok}
    for suite in accepted:
        assert results[suite].protocol == "TLSv1.2" and results[suite].cipher == suite
    assert accepted == ACCEPTED_TLS12, f"accepted {sorted(accepted)}"


@pytest.mark.parametrize("suite", sorted(ACCEPTED_TLS13))
def test_tls13_aead_suites_work(agent_proc: AgentProcess, suite: str) -> None:
    got = s_client(agent_proc.https_port, "-tls1_3", "-ciphersuites", suite)
    assert got.ok and got.protocol == "TLSv1.3" and got.cipher == suite, got.output


def test_default_handshake_is_tls13(agent_proc: AgentProcess) -> None:
    got = s_client(agent_proc.https_port)
    assert got.ok and got.protocol == "TLSv1.3", got.output


# --- no plaintext -------------------------------------------------------------------------------

PLAINTEXT_PROBES = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    b"GET /api/v1/openapi.json HTTP/1.0\r\n\r\n",
    b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n",
]


def plaintext_reply(port: int, probe: bytes) -> bytes:
    """Whatever a plaintext client gets back before the server closes (or 5 s pass)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(probe)
        try:
            while len(got) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return got


def is_plaintext_answer(reply: bytes) -> bool:
    return reply.startswith((b"HTTP/", b"RTSP/")) or b"<html" in reply.lower()


def test_plaintext_probe_detects_a_plain_server() -> None:
    """Control for the next test: a plain HTTP listener is recognised."""

    class Plain(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(4096)
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with socketserver.TCPServer(("127.0.0.1", 0), Plain) as srv:
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            assert is_plaintext_answer(plaintext_reply(srv.server_address[1], PLAINTEXT_PROBES[0]))
        finally:
            srv.shutdown()


@pytest.mark.parametrize("probe", PLAINTEXT_PROBES, ids=["http11", "http10", "rtsp"])
def test_no_plaintext_answer_on_any_listener(agent_proc: AgentProcess, probe: bytes) -> None:
    for port in sorted(listening_ports(agent_proc.proc.pid)):
        reply = plaintext_reply(port, probe)
        assert not is_plaintext_answer(reply), f"port {port} answered plaintext: {reply[:200]!r}"
        # Nothing, or a TLS record (an alert): content type 0x15, version 3.x.
        assert reply == b"" or (reply[0] == 0x15 and reply[1] == 3), reply[:40]


# --- the certificate ----------------------------------------------------------------------------

def server_chain(port: int, *args: str) -> tuple[subprocess.CompletedProcess[str], list[x509.Certificate]]:
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                          "-showcerts", *args], input="", capture_output=True, text=True, timeout=HANDSHAKE_TIMEOUT_S)
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", out.stdout, re.S)
    return out, [x509.load_pem_x509_certificate(p.encode()) for p in pems]


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_certificate_verifies_against_the_device_ca(agent_proc: AgentProcess, name: str) -> None:
    check = ["-verify_ip", name] if name[0].isdigit() else ["-verify_hostname", name]
    out, _ = server_chain(agent_proc.https_port, "-CAfile", str(agent_proc.ca_file), "-verify_return_error", *check)
    assert out.returncode == 0 and "Verify return code: 0 (ok)" in out.stdout, out.stdout[-1500:] + out.stderr


def test_certificate_fails_against_another_ca(agent_proc: AgentProcess, tmp_path: Path) -> None:
    other_key, other = tmp_path / "k.pem", tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(other_key), "-out", str(other), "-subj", "/CN=Other CA", "-days", "1"],
                   check=True, capture_output=True, timeout=30)
    out, _ = server_chain(agent_proc.https_port, "-CAfile", str(other), "-verify_return_error")
    assert out.returncode != 0 and "Verify return code: 0 (ok)" not in out.stdout


def test_certificate_has_sans_and_chains_to_the_device_ca(agent_proc: AgentProcess) -> None:
    _, chain = server_chain(agent_proc.https_port)
    assert chain, "no certificate presented"
    leaf = chain[0]
    ca = x509.load_pem_x509_certificate(agent_proc.ca_file.read_bytes())
    leaf.verify_directly_issued_by(ca)  # raises if the signature or names do not match
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = set(san.get_values_for_type(x509.IPAddress))
    assert "localhost" in dns and ipaddress.ip_address("127.0.0.1") in ips, san
    assert any(d.endswith(".local") for d in dns), f"no per-device name in {dns}"
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size >= 256
    now = dt.datetime.now(dt.UTC)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc
    # The CA is public; the leaf must not be the CA itself (a self-signed server cert is flagged).
    assert leaf.subject != leaf.issuer


# --- testssl ------------------------------------------------------------------------------------

BAD_SEVERITIES = {"MEDIUM", "HIGH", "CRITICAL"}
# Findings that are artefacts of testing a camera on loopback, by testssl id, with the reason.
NOT_APPLICABLE = {
    # The certificate is issued by the device's own CA (before factory provisioning) or the
    # factory CA; clients trust exactly that CA (pinned trust anchor, fetched during claim), and a
    # camera on a closed LAN has no reachable OCSP responder or CRL server (ER-01 forbids calls to
    # servers the owner did not approve). Revocation is by re-provisioning: a new key and chain.
    "cert_revocation",
    # DNS CAA and certificate transparency concern publicly trusted web PKI names, not a device
    # CA for a LAN address; testssl is run with --nodns, so it cannot look them up anyway.
    "DNS_CAArecord",
    "certificate_transparency",
}
# testssl reports its own trouble as WARN/FATAL; a FATAL means the scan did not finish.
SCAN_FATAL = {"FATAL"}


@pytest.mark.slow
def test_testssl_reports_nothing_medium_or_worse(agent_proc: AgentProcess, tmp_path: Path) -> None:
    need("testssl")
    report = tmp_path / "testssl.json"
    # The full run (about 45 s on a quiet machine, 2-4 min when the 2 cores are shared);
    # API_TESTSSL_FAST=1 adds --fast for a quicker, less thorough pass.
    fast = ["--fast"] if os.environ.get("API_TESTSSL_FAST") == "1" else []
    out = subprocess.run(
        ["testssl", "--quiet", "--color", "0", "--nodns", "none", "--ip", "127.0.0.1", *fast,
         "--add-ca", str(agent_proc.ca_file), "--jsonfile", str(report), "--warnings", "batch",
         "--openssl-timeout", "10", f"127.0.0.1:{agent_proc.https_port}"],
        capture_output=True, text=True, timeout=540)
    assert report.exists(), out.stdout[-3000:] + out.stderr[-2000:]
    findings = json.loads(report.read_text())
    by_id = {f["id"]: f for f in findings}
    fatal = [f for f in findings if f["severity"] in SCAN_FATAL]
    assert not fatal, f"testssl did not complete: {fatal}"
    bad = [f for f in findings if f["severity"] in BAD_SEVERITIES and f["id"] not in NOT_APPLICABLE]
    assert not bad, "testssl findings:\n" + "\n".join(f"{f['id']} {f['severity']}: {f['finding']}" for f in bad)
    # The scan really looked (guards against a silently empty run).
    expect = {"TLS1": "not offered", "TLS1_1": "not offered", "SSLv3": "not offered",
              "cert_chain_of_trust": "passed.", "cipher_order": "server"}
    for fid, text in expect.items():
        assert fid in by_id and text in by_id[fid]["finding"], (fid, by_id.get(fid))
    for fid in ("LUCKY13", "BEAST", "SWEET32", "ROBOT", "heartbleed", "CRIME_TLS", "HSTS_time", "cert_trust"):
        assert by_id.get(fid, {}).get("severity") == "OK", (fid, by_id.get(fid))
