"""The boot attestation record written by bootverify shows in status and in the audit log."""

from __future__ import annotations

import json
from pathlib import Path

from tests.agentharness import audit_records, running_agent

Json = dict[str, object]


async def _status_with(tmp_path: Path, record: Json | str) -> tuple[Json, list[Json]]:
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    (state / "run" / "boot-attestation.json").write_text(record if isinstance(record, str) else json.dumps(record))
    async with running_agent(state) as agent:
        token = await agent.claim()
        status, body = await agent.request("GET", "/api/v1/status", token=token)
        assert status == 200
        return body, [r for r in audit_records(agent.svc) if r["event"] == "boot.attestation"]


async def test_green_release_boot(tmp_path: Path) -> None:
    rec = {"result": "green", "reasons": [], "slot": "A", "profile": "release", "rootfs_root_hash": "ab" * 32}
    body, events = await _status_with(tmp_path, rec)
    core = body["capabilities"]["core"]  # type: ignore[index]
    assert core["boot_attestation"]["slot"] == "A" and body["warnings"] == []
    assert [e["outcome"] for e in events] == ["success"] and events[0]["details"]["rootfs_root_hash"] == "ab" * 32


async def test_dev_profile_and_fallback_are_warned(tmp_path: Path) -> None:
    rec = {"result": "yellow", "reasons": ["boot.fallback", "boot.dev_profile"], "slot": "B", "profile": "dev"}
    body, events = await _status_with(tmp_path, rec)
    warnings = body["warnings"]
    assert any("yellow" in w and "boot.fallback" in w for w in warnings)  # type: ignore[union-attr]
    assert any("DEV PROFILE" in w for w in warnings)  # type: ignore[union-attr]
    assert [e["outcome"] for e in events] == ["info"]


async def test_unreadable_record_is_a_failure_event(tmp_path: Path) -> None:
    _body, events = await _status_with(tmp_path, "{not json")
    assert [e["outcome"] for e in events] == ["failure"]
