"""First-boot claim: one-time per-device code, nothing else served before it."""

from __future__ import annotations

import os
import pathlib
import stat

from agent.auth.claim import CODE_CHARS, generate_setup_code, normalize_code
from tests.agentharness import STRONG_PASSWORD, Agent, audit_records


def test_setup_codes_are_long_and_unique() -> None:
    codes = {normalize_code(generate_setup_code()) for _ in range(2000)}
    assert len(codes) == 2000
    assert all(len(c) == CODE_CHARS for c in codes)  # 100 bits each


async def test_setup_code_file_is_private(agent: Agent) -> None:
    path = agent.svc.state.setup_code_file
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert agent.setup_code and agent.setup_code in path.read_text()
    # Only the keyed hash is stored; the code itself appears in no data file.
    for root, _dirs, files in os.walk(agent.svc.state.data):
        for f in files:
            data = pathlib.Path(root, f).read_bytes()  # noqa: ASYNC240
            assert normalize_code(agent.setup_code).encode() not in data


async def test_unclaimed_device_serves_only_claim(agent: Agent) -> None:
    for method, path in [("GET", "/api/v1/status"), ("GET", "/api/v1/users"), ("POST", "/api/v1/login"),
                         ("GET", "/api/v1/settings"), ("PATCH", "/api/v1/settings/video")]:
        status, body = await agent.request(method, path, json_body={})
        assert status == 403 and body["error"]["code"] == "device.unclaimed", (method, path, body)


async def test_wrong_then_right_then_reused_code(agent: Agent) -> None:
    bad = {"setup_code": "00000-00000-00000-00000", "username": "owner", "password": STRONG_PASSWORD}
    status, body = await agent.request("POST", "/api/v1/claim", json_body=bad)
    assert status == 403 and body["error"]["code"] == "claim.bad_code"
    weak = {"setup_code": agent.setup_code, "username": "owner", "password": "admin"}
    status, body = await agent.request("POST", "/api/v1/claim", json_body=weak)
    assert status == 400 and body["error"]["field"] == "password"
    ok = {"setup_code": agent.setup_code, "username": "owner", "password": STRONG_PASSWORD}
    status, body = await agent.request("POST", "/api/v1/claim", json_body=ok)
    assert status == 201 and body == {"username": "owner", "role": "admin"}
    assert not agent.svc.state.setup_code_file.exists()
    again = {**ok, "username": "intruder"}
    status, body = await agent.request("POST", "/api/v1/claim", json_body=again)
    assert status == 409 and body["error"]["code"] == "claim.already_claimed"
    assert agent.svc.users.get("intruder") is None
    events = [r for r in audit_records(agent.svc) if r["event"] == "claim"]
    assert [e["outcome"] for e in events] == ["failure", "success", "failure"]


async def test_claim_code_guessing_is_throttled(agent: Agent) -> None:
    bad = {"setup_code": "11111-11111-11111-11111", "username": "owner", "password": STRONG_PASSWORD}
    statuses = [(await agent.request("POST", "/api/v1/claim", json_body=bad))[0] for _ in range(8)]
    assert statuses[:5] == [403] * 5 and 429 in statuses[5:]
