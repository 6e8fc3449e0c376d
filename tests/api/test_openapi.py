"""The OpenAPI document: the repository copy is current, the served one is the route table, and
schemathesis fuzzing of every operation (admin and viewer tokens) finds no 5xx and no crash.

The fuzzed agent is a real `camera-agent run` inside a network namespace this test creates
(`unshare --net`, loopback only): fuzzed settings name random syslog, NTP and update servers, and
whatever the agent does with them must not leave the machine. Clients run in the same namespace
through `nsenter`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.agentharness import STRONG_PASSWORD, stop_process
from tests.conftest import need

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HTTPS_PORT, RTSPS_PORT = 8443, 8322  # inside the private namespace every port is free
# Fuzzing cases per operation, and phases. The viewer run is lighter: most of its calls stop at
# the role check, so the coverage phase's boundary values (thousands of cases) would add little.
MAX_EXAMPLES = {"admin": int(os.environ.get("API_FUZZ_EXAMPLES", "25")),
                "viewer": int(os.environ.get("API_FUZZ_EXAMPLES_VIEWER", "15"))}
PHASES = {"admin": "examples,coverage,fuzzing", "viewer": "examples,fuzzing"}
SEED = os.environ.get("API_FUZZ_SEED", "20261124")
# schemathesis checks that must hold. Left out: positive_data_acceptance - the handlers apply
# rules a JSON schema cannot state (port conflicts, the breached-password list, even video
# heights), so some schema-valid bodies are rightly refused with 400 naming the field.
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
])
# These end the fuzzer's own session or device state; tests/api/test_role_matrix.py and
# test_sessions.py cover them.
ADMIN_EXCLUDED = ["/api/v1/system/factory-reset", "/api/v1/logout"]
VIEWER_EXCLUDED = ["/api/v1/logout"]


# --- the repository copy ------------------------------------------------------------------------

def _operations(doc: dict[str, Any]) -> set[str]:
    return {f"{m.upper()} {p}" for p, ops in doc.get("paths", {}).items() for m in ops}


def generated_document() -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "agent.api.openapi"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_repository_openapi_json_is_current() -> None:
    path = REPO / "docs" / "openapi.json"
    generated = generated_document()
    if not path.exists():
        pytest.fail("docs/openapi.json is missing: run `make openapi` and commit the result")
    committed = json.loads(path.read_text())
    if committed != generated:
        added = sorted(_operations(generated) - _operations(committed))
        removed = sorted(_operations(committed) - _operations(generated))
        pytest.fail("docs/openapi.json differs from `python -m agent.api.openapi` (the route table): "
                    f"run `make openapi` and commit it. New operations: {added}; gone: {removed}; "
                    "other differences are in summaries, roles or schemas.")


# --- an agent in its own network namespace ------------------------------------------------------

@dataclass
class NetnsAgent:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log: Path
    tokens: dict[str, str]

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{HTTPS_PORT}"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "device-ca.pem"

    def inside(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", "--", *cmd]

    def curl(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        # From 127.0.0.2: the fuzzer's wrong logins from 127.0.0.1 get that address throttled.
        cmd = ["curl", "-sS", "--interface", "127.0.0.2", "--max-time", "20", "--cacert", str(self.ca_file),
               "-X", method, "-o", "-",
               "-w", "\n%{http_code}", self.base + path]
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        if token is not None:
            cmd += ["-H", f"Authorization: Bearer {token}"]
        out = subprocess.run(self.inside(*cmd), capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            return 0, out.stderr
        text, _, code = out.stdout.rpartition("\n")
        return int(code), json.loads(text) if text.strip() else None


def _release_keyring(path: Path) -> None:
    """A release root generated for this run: a device always has one (its image carries it), so
    firmware uploads reach signature verification instead of stopping at "no keyring"."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz release root")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _start(tmp: Path) -> NetnsAgent:
    state = tmp / "state"
    state.mkdir(mode=0o700)
    log = tmp / "agent.log"
    keyring = tmp / "release-root.pem"
    _release_keyring(keyring)
    config = tmp / "agent-config.json"
    config.write_text(json.dumps({"ota": {"keyring": str(keyring)}}))
    cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
           sys.executable, "-m", "agent.cli", "run", "--state-dir", str(state), "--bind", "127.0.0.1",
           "--https-port", str(HTTPS_PORT), "--rtsps-port", str(RTSPS_PORT), "--config", str(config)]
    # unshare and sh exec in place, so the Popen pid is the agent and names its namespace.
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    agent = NetnsAgent(proc, state, log, {})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited: {log.read_text()[-3000:]}")
        if agent.ca_file.exists() and agent.curl("GET", "/api/v1/openapi.json")[0] == 200:
            return agent
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"agent did not start: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsAgent]:
    need("unshare", "nsenter", "ip", "curl")
    agent = _start(tmp_path_factory.mktemp("fuzz"))
    try:
        code = (agent.state_dir / "setup-code").read_text().strip()
        status, body = agent.curl("POST", "/api/v1/claim",
                                  {"setup_code": code, "username": "owner", "password": STRONG_PASSWORD})
        assert status == 201, body
        status, body = agent.curl("POST", "/api/v1/login", {"username": "owner", "password": STRONG_PASSWORD})
        assert status == 200, body
        agent.tokens["admin"] = body["token"]
        status, body = agent.curl("POST", "/api/v1/users",
                                  {"username": "viewer1", "password": STRONG_PASSWORD, "role": "viewer"},
                                  token=agent.tokens["admin"])
        assert status == 201, body
        status, body = agent.curl("POST", "/api/v1/login", {"username": "viewer1", "password": STRONG_PASSWORD})
        assert status == 200, body
        agent.tokens["viewer"] = body["token"]
        yield agent
    finally:
        stop_process(agent.proc)


def test_served_document_is_the_generated_one(fuzz_agent: NetnsAgent) -> None:
    """A running device with every capability serves the same document the generator prints."""
    status, served = fuzz_agent.curl("GET", "/api/v1/openapi.json")
    assert status == 200
    assert served == generated_document()


@dataclass
class FuzzResult:
    returncode: int
    output: str
    tests: int
    failures: int
    errors: int
    failed_cases: list[str]
    tested: set[str]


def schemathesis(agent: NetnsAgent, token: str, excluded: list[str], work: Path, examples: int,
                 phases: str) -> FuzzResult:
    junit = work / "junit.xml"
    cmd = [str(BIN / "st"), "run", f"{agent.base}/api/v1/openapi.json",
           "--tls-verify", str(agent.ca_file), "-H", f"Authorization: Bearer {token}",
           "--checks", CHECKS, "--max-examples", str(examples), "--seed", SEED,
           "--phases", phases, "--request-timeout", "20", "--workers", "2",
           "--suppress-health-check", "too_slow", "--report", "junit", "--report-junit-path", str(junit)]
    for path in excluded:
        cmd += ["--exclude-path", path]
    out = subprocess.run(agent.inside(*cmd), cwd=work, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_COLOR": "1", "HOME": str(work)})
    text = out.stdout + out.stderr
    assert junit.exists(), f"schemathesis wrote no report (exit {out.returncode}):\n{text[-4000:]}"
    root = ET.parse(junit).getroot()  # noqa: S314 - our own subprocess's report
    cases = root.findall(".//testcase")
    failed = [c.get("name", "?") for c in cases if c.find("failure") is not None or c.find("error") is not None]
    return FuzzResult(out.returncode, text, len(cases), int(root.get("failures", "0")),
                      int(root.get("errors", "0")), failed, {c.get("name", "?") for c in cases})


def _expected_operations(agent: NetnsAgent, excluded: list[str]) -> set[str]:
    status, doc = agent.curl("GET", "/api/v1/openapi.json")
    assert status == 200
    # With any path filter given, schemathesis also leaves out the operation serving the document
    # it loaded (seen with 4.32); that one is fetched by every run anyway.
    skip = {*excluded, "/api/v1/openapi.json"}
    return {op for op in _operations(doc) if op.split(" ", 1)[1] not in skip}


def fresh_token(agent: NetnsAgent, role: str) -> str:
    """A valid token for ``role`` now. The admin run may legitimately reset, demote or delete
    viewer1 (schemathesis reuses names it saw in responses), so viewer1 is restored first."""
    def login(user: str) -> str:
        status, body = agent.curl("POST", "/api/v1/login", {"username": user, "password": STRONG_PASSWORD})
        assert status == 200, body
        token: str = body["token"]
        return token

    admin = login("owner")
    if role == "admin":
        return admin
    want = {"password": STRONG_PASSWORD, "role": "viewer"}
    status, body = agent.curl("PATCH", "/api/v1/users/viewer1", want, token=admin)
    if status == 404:
        status, body = agent.curl("POST", "/api/v1/users", {"username": "viewer1", **want}, token=admin)
    assert status in (200, 201), body
    return login("viewer1")


@pytest.mark.slow
@pytest.mark.parametrize("role", ["admin", "viewer"])
def test_schemathesis_finds_no_server_error(fuzz_agent: NetnsAgent, tmp_path: Path, role: str) -> None:
    if not (BIN / "st").exists():
        pytest.fail(f"{BIN / 'st'} missing: schemathesis is a dev dependency (make venv)")
    excluded = ADMIN_EXCLUDED if role == "admin" else VIEWER_EXCLUDED
    token = fresh_token(fuzz_agent, role)
    result = schemathesis(fuzz_agent, token, excluded, tmp_path, MAX_EXAMPLES[role], PHASES[role])
    assert result.failures == 0 and result.errors == 0 and result.returncode == 0, (
        f"{role}: failing operations {result.failed_cases}\n{result.output[-6000:]}")
    expected = _expected_operations(fuzz_agent, excluded)
    assert result.tested == expected, f"not fuzzed: {sorted(expected - result.tested)}"
    # The token stayed valid through the run, so every operation was fuzzed with the role's rights.
    status, body = fuzz_agent.curl("GET", "/api/v1/session", token=token)
    assert status == 200 and body["user"]["role"] == role, body
    assert fuzz_agent.proc.poll() is None, "the agent died during fuzzing"
