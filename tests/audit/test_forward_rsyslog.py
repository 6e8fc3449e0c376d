"""Forwarding to a real rsyslogd over validated TLS (RFC 5425), and refusing an untrusted server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.audit.forward import AuditForwarder, SyslogTarget
from agent.audit.log import AuditLog
from agent.audit.verify import list_segments
from tests.agentharness import free_port
from tests.audit.logfactory import KEY, SEGMENT_BYTES, SMALL
from tests.audit.pki import Issued, issue, make_ca
from tests.audit.rsyslog import RSYSLOGD, Rsyslog
from tests.conftest import need

SERVER_NAME = "syslog.test"
CLIENT_NAME = "camera.test"


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    need(RSYSLOGD, "setpriv")
    ca, other = make_ca("Audit Test Syslog CA"), make_ca("Some Other CA")
    return {
        "ca": ca,
        "server": issue(ca, SERVER_NAME, dns=(SERVER_NAME,), ips=("127.0.0.1",)),
        "client": issue(ca, CLIENT_NAME, dns=(CLIENT_NAME,), client=True),
        "other_ca": other,
        "impostor": issue(other, SERVER_NAME, dns=(SERVER_NAME,), ips=("127.0.0.1",)),
    }


@pytest.fixture
def servers() -> Iterator[Callable[..., Rsyslog]]:
    made: list[Rsyslog] = []

    def make(port: int, ca: Issued, server: Issued, client_ca: Issued) -> Rsyslog:
        # rsyslog checks client certificates against its CA file; impostor servers still trust
        # our client CA so the only thing under test is OUR validation of THEM.
        rs = Rsyslog(port, ca_pem=client_ca.cert_pem, cert_pem=server.cert_pem, key_pem=server.key_pem,
                     permitted_peer=CLIENT_NAME)
        made.append(rs)
        return rs

    yield make
    for rs in made:
        rs.cleanup()


def forwarder(log: AuditLog, pki: dict[str, Issued], port: int, *, server_name: str = SERVER_NAME,
              queue_size: int = 4096) -> AuditForwarder:
    async def hook(event: str, outcome: str, details: dict[str, Any]) -> None:
        await log.record(event, outcome=outcome, details=details)

    target = SyslogTarget("127.0.0.1", port, pki["ca"].cert_pem.decode(), server_name)
    client = pki["client"]
    return AuditForwarder(log, target, hostname="cam-0001", queue_size=queue_size,
                          client_identity=lambda: (client.cert_pem, client.key_pem),
                          backoff_initial=0.05, backoff_max=0.4, connect_timeout=5, audit_hook=hook)


async def wait_for(pred: Callable[[], bool], limit_s: float = 15.0) -> None:
    deadline = time.monotonic() + limit_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def received(rs: Rsyslog) -> list[dict[str, Any]]:
    out = []
    for line in rs.lines():
        fac, sev, host, app, msgid, sd, msg = line.split("|", 6)
        if app != "camera-agent":
            continue
        msg = msg.removeprefix("\ufeff")
        out.append({"facility": int(fac), "severity": int(sev), "host": host, "msgid": msgid, "sd": sd,
                    "msg": msg, "record": json.loads(msg)})
    return out


def disk_lines(directory: Path) -> dict[int, str]:
    out = {}
    for _sid, path in list_segments(directory):
        for line in path.read_text().splitlines():
            out[json.loads(line)["seq"]] = line
    return out


async def test_records_reach_rsyslog_over_mutual_tls(tmp_path: Path, pki: dict[str, Issued],
                                                     servers: Callable[..., Rsyslog]) -> None:
    port = free_port()
    rs = servers(port, pki["ca"], pki["server"], pki["ca"])
    rs.start()
    log = AuditLog(tmp_path / "audit", KEY)
    fwd = forwarder(log, pki, port)
    await fwd.start()
    try:
        await wait_for(lambda: fwd.state == "connected")
        sent = []
        for i in range(30):
            actor = 'ev"il]\\admin' if i == 7 else f"user{i}"
            await log.record("auth.login", outcome=["success", "failure", "denied"][i % 3], actor=actor,
                             source="192.0.2.9", details={"i": i})
            sent.append(log.head_seq)
        await wait_for(lambda: {r["record"]["seq"] for r in received(rs)} >= set(sent))
    finally:
        await fwd.stop()
        log.close()
    got = {r["record"]["seq"]: r for r in received(rs)}
    on_disk = disk_lines(tmp_path / "audit")
    for seq in sent:
        r = got[seq]
        assert r["msg"] == on_disk[seq]  # byte-exact record, MAC included
        assert r["facility"] == 13 and r["host"] == "cam-0001" and r["msgid"] == "auth.login"
        assert r["severity"] == {"success": 6, "failure": 5, "denied": 4}[r["record"]["outcome"]]
        assert f'seq="{seq}"' in str(r["sd"])
    assert 'actor="ev\\"il\\]\\\\admin"' in str(got[sent[7]]["sd"])
    assert fwd.status()["dropped"] == 0 and fwd.status()["sent"] >= 30


async def test_overflow_is_backfilled_from_disk_and_queue_resumes_after_reconnect(
        tmp_path: Path, pki: dict[str, Issued], servers: Callable[..., Rsyslog]) -> None:
    port = free_port()
    rs = servers(port, pki["ca"], pki["server"], pki["ca"])
    log = AuditLog(tmp_path / "audit", KEY)
    fwd = forwarder(log, pki, port, queue_size=8)
    await fwd.start()
    try:
        # Collector down: the queue keeps the newest 8, older ones overflow.
        for i in range(20):
            await log.record("stream.start", outcome="info", details={"i": i})
        await asyncio.sleep(0.1)
        st = fwd.status()
        assert st["state"] in ("backoff", "connecting") and st["last_error"]
        assert st["queued"] == 8 and st["overflowed"] >= 12
        rs.start()
        await wait_for(lambda: fwd.state == "connected" and fwd.status()["queued"] == 0)
        # Every record after the genesis (seq 1) arrives: the overflowed range was re-read,
        # verified, from the device's log; nothing was lost.
        head = log.head_seq
        await wait_for(lambda: {r["record"]["seq"] for r in received(rs)} >= set(range(2, head + 1)))
        st = fwd.status()
        assert st["dropped"] == 0 and st["backfilled"] >= 12
        disk = disk_lines(tmp_path / "audit")
        assert all(r["msg"] == disk[r["record"]["seq"]] for r in received(rs))
        # Collector restarts: once the sender notices, new records wait in the queue and are
        # delivered after the reconnect, without a gap.
        rs.stop()
        await wait_for(lambda: fwd.state != "connected")
        for i in range(5):
            await log.record("stream.stop", outcome="info", details={"i": i})
        later = list(range(log.head_seq - 4, log.head_seq + 1))
        await asyncio.sleep(0.3)
        assert fwd.status()["queued"] >= 5
        rs.start()
        await wait_for(lambda: {r["record"]["seq"] for r in received(rs)} >= set(later))
        assert fwd.status()["connects"] >= 2
    finally:
        await fwd.stop()
        log.close()


async def test_records_rotated_off_before_backfill_are_counted_lost(
        tmp_path: Path, pki: dict[str, Issued], servers: Callable[..., Rsyslog]) -> None:
    port = free_port()
    rs = servers(port, pki["ca"], pki["server"], pki["ca"])
    log = AuditLog(tmp_path / "audit", KEY, max_segment_bytes=SEGMENT_BYTES, max_segments=2, limits=SMALL)
    fwd = forwarder(log, pki, port, queue_size=4)
    await fwd.start()
    try:
        for i in range(120):  # far more than 2 small segments hold
            await log.record("stream.start", outcome="info", details={"i": i})
        rs.start()
        await wait_for(lambda: fwd.state == "connected" and fwd.status()["queued"] == 0)
        head = log.head_seq
        await wait_for(lambda: head in {r["record"]["seq"] for r in received(rs)})
        got = sorted({r["record"]["seq"] for r in received(rs)})
        st = fwd.status()
        # What arrived is one contiguous run up to the head; everything before it is counted.
        assert got == list(range(got[0], got[-1] + 1)) and got[-1] >= head
        assert st["dropped"] == got[0] - 2 and st["dropped"] > 50
    finally:
        await fwd.stop()
        log.close()


@pytest.mark.parametrize(("server_cert", "server_name", "error"), [
    ("impostor", SERVER_NAME, "certificate verify failed"),  # chain to another CA
    ("server", "collector.example", "certificate verify failed"),  # right CA, wrong name
])
async def test_untrusted_server_gets_nothing(tmp_path: Path, pki: dict[str, Issued],
                                             servers: Callable[..., Rsyslog], server_cert: str,
                                             server_name: str, error: str) -> None:
    port = free_port()
    rs = servers(port, pki["ca"], pki[server_cert], pki["ca"])
    rs.start()
    log = AuditLog(tmp_path / "audit", KEY)
    fwd = forwarder(log, pki, port, server_name=server_name)
    await fwd.start()
    try:
        for i in range(5):
            await log.record("auth.login", outcome="success", details={"i": i})
        await wait_for(lambda: fwd.last_error is not None and fwd.connects == 0)
        await asyncio.sleep(1.0)  # several reconnect attempts
        st = fwd.status()
        assert st["connects"] == 0 and st["sent"] == 0 and error in str(st["last_error"])
        assert received(rs) == []
    finally:
        await fwd.stop()
        log.close()
    failures = [json.loads(line) for line in disk_lines(tmp_path / "audit").values()]
    forward_events = [r for r in failures if r["event"] == "audit.forward"]
    # Recorded once (state transitions only), not once per retry.
    assert len(forward_events) == 1 and forward_events[0]["outcome"] == "failure"
    assert error in forward_events[0]["details"]["error"]


async def test_cursor_survives_agent_restart(tmp_path: Path, pki: dict[str, Issued],
                                             servers: Callable[..., Rsyslog]) -> None:
    port = free_port()
    rs = servers(port, pki["ca"], pki["server"], pki["ca"])
    rs.start()
    d = tmp_path / "audit"
    log = AuditLog(d, KEY)
    fwd = forwarder(log, pki, port)
    await fwd.start()
    for i in range(5):
        await log.record("auth.login", outcome="success", details={"i": i})
    head = log.head_seq
    await wait_for(lambda: head in {r["record"]["seq"] for r in received(rs)})
    await fwd.stop()
    # Agent down for the forwarder (e.g. restarting): records keep being written.
    for i in range(7):
        await log.record("auth.logout", outcome="success", details={"i": i})
    log.close()
    log = AuditLog(d, KEY)
    fwd = forwarder(log, pki, port)
    await fwd.start()
    try:
        head = log.head_seq
        await wait_for(lambda: {r["record"]["seq"] for r in received(rs)} >= set(range(2, head + 1)))
    finally:
        await fwd.stop()
        log.close()
    # A forged cursor (wrong MAC) is ignored: forwarding starts "from now", nothing is skipped
    # silently and nothing old is replayed.
    cursor = d / "forward-cursor.json"
    cursor.write_bytes(cursor.read_bytes().replace(b'"seq":', b'"seq":9'))
    log = AuditLog(d, KEY)
    fwd = forwarder(log, pki, port)
    await fwd.start()
    try:
        assert fwd._cursor == log.head_seq
    finally:
        await fwd.stop()
        log.close()
