"""The audit capability through the real HTTPS app: export, verify, roles, settings -> forwarder."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from agent.audit.verify import list_segments
from tests.agentharness import Agent, free_port
from tests.audit.pki import issue, make_ca
from tests.audit.rsyslog import RSYSLOGD, Rsyslog
from tests.conftest import need


async def export(agent: Agent, token: str, query: str = "") -> tuple[int, bytes, str]:
    async with agent.http.get(agent.base + "/api/v1/audit" + query, ssl=agent.ssl,
                              headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


async def test_admin_exports_verified_jsonl(agent: Agent) -> None:
    token = await agent.claim()
    status, body, ctype = await export(agent, token)
    assert status == 200 and ctype.startswith("application/x-ndjson")
    recs = [json.loads(line) for line in body.decode().splitlines()]
    events = [r["event"] for r in recs]
    assert events[0] == "audit.genesis" and "claim" in events and "auth.login" in events
    assert events[-1] == "audit.export"  # the export records itself before reading
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    exp = recs[-1]
    assert exp["actor"] == "owner" and exp["source"] == "127.0.0.1" and exp["details"]["since"] == 0
    since = recs[-2]["seq"]
    status, body, _ = await export(agent, token, f"?since={since}")
    assert next(json.loads(line)["seq"] for line in body.decode().splitlines()) == since
    status, body, ctype = await export(agent, token, f"?since={since}&format=rfc5424")
    assert status == 200 and body.startswith(b"<") and b"[audit@32473 seq=" in body


@pytest.mark.parametrize("query", ["?since=-1", "?since=abc", "?since=99999999999999999999", "?format=xml"])
async def test_bad_queries_are_400(agent: Agent, query: str) -> None:
    token = await agent.claim()
    status, body, _ = await export(agent, token, query)
    assert status == 400, body


async def test_only_admins(agent: Agent) -> None:
    token = await agent.claim()
    for role in ("viewer", "operator"):
        other = await agent.add_user(token, f"u{role}", role)
        for path in ("/api/v1/audit", "/api/v1/audit/verify"):
            status, _ = await agent.request("GET", path, token=other)
            assert status == 403, (role, path)
    status, _ = await agent.request("GET", "/api/v1/audit")
    assert status == 401


async def test_verify_endpoint_and_tampering_while_running(agent: Agent) -> None:
    token = await agent.claim()
    status, body = await agent.request("GET", "/api/v1/audit/verify", token=token)
    assert status == 200 and body["ok"] is True and body["last_seq"] >= 3 and body["quarantined"] == []
    _, path = list_segments(agent.svc.state.audit_dir)[0]
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"event":"claim"', b'"event":"clain"', 1))
    status, body = await agent.request("GET", "/api/v1/audit/verify", token=token)
    assert status == 200 and body["ok"] is False and body["error"]["code"] == "audit.mac_mismatch"
    # An export cannot hand out a tampered log as if complete: the transfer is aborted.
    with pytest.raises(aiohttp.ClientPayloadError):
        await export(agent, token)


async def test_status_reports_log_and_forwarder(agent: Agent) -> None:
    token = await agent.claim()
    _status, body = await agent.request("GET", "/api/v1/status", token=token)
    audit = body["capabilities"]["audit"]
    assert audit["head_seq"] >= 3 and audit["segments"] == 1 and audit["forwarder"]["state"] == "off"


async def test_settings_start_forwarding_to_rsyslog(agent: Agent) -> None:
    need(RSYSLOGD, "setpriv")
    ca = make_ca("Collector CA")
    server = issue(ca, "collector.test", dns=("collector.test",))
    port = free_port()
    rs = Rsyslog(port, ca_pem=ca.cert_pem, cert_pem=server.cert_pem, key_pem=server.key_pem, permitted_peer=None)
    rs.start()
    try:
        token = await agent.claim()
        status, body = await agent.request("PATCH", "/api/v1/settings", token=token, json_body={
            "syslog": {"host": "127.0.0.1", "port": port, "ca_pem": ca.cert_pem.decode(),
                       "server_name": "collector.test"}})
        assert status == 200, body
        status, body = await agent.request("POST", "/api/v1/logout", token=token)
        deadline = time.monotonic() + 15
        while not any("auth.logout" in line for line in rs.lines()):
            assert time.monotonic() < deadline, rs.log.read_text()
            await asyncio.sleep(0.1)
        token = await agent.login("owner", "correct-horse-battery-staple-42")
        status, body = await agent.request("GET", "/api/v1/status", token=token)
        fwd = body["capabilities"]["audit"]["forwarder"]
        assert fwd["state"] == "connected" and fwd["server_name"] == "collector.test"
        # Turning forwarding off stops the sender.
        status, body = await agent.request("PATCH", "/api/v1/settings", token=token, json_body={
            "syslog": {"host": None, "ca_pem": None, "server_name": None}})
        assert status == 200, body
        status, body = await agent.request("GET", "/api/v1/status", token=token)
        assert body["capabilities"]["audit"]["forwarder"]["state"] == "off"
    finally:
        rs.cleanup()
