"""Brute force: increasing delays per source and per account, never a permanent lockout."""

from __future__ import annotations

from agent.auth.throttle import Throttle, ThrottlePolicy
from tests.agentharness import STRONG_PASSWORD, Agent


def test_source_delays_increase_and_are_capped() -> None:
    t = Throttle(ThrottlePolicy(source_free=3, source_cap=60, account_free=1000))
    now = 0.0
    waits = []
    for _ in range(12):
        now += t.wait_time("admin", "10.0.0.9", now)  # the attacker waits exactly as told
        t.failure("admin", "10.0.0.9", now)
        waits.append(t.wait_time("admin", "10.0.0.9", now))
    assert waits[:2] == [0, 0]
    assert waits[2:7] == [1, 2, 4, 8, 16]
    assert max(waits) == 60  # capped: never a permanent lockout


def test_account_delay_is_short_and_trusted_source_is_exempt() -> None:
    t = Throttle(ThrottlePolicy(account_free=5, account_cap=10))
    now = 0.0
    t.success("admin", "192.0.2.10", now)  # the real admin's usual address
    for i in range(40):  # distributed guessing from many addresses
        t.failure("admin", f"198.51.100.{i}", now)
    assert 0 < t.wait_time("admin", "203.0.113.1", now) <= 10  # seconds, not a lockout
    assert t.wait_time("admin", "192.0.2.10", now) == 0
    assert t.wait_time("admin", "203.0.113.1", now + 10) == 0


def test_table_is_bounded() -> None:
    t = Throttle(ThrottlePolicy(max_entries=100))
    for i in range(1000):
        t.failure(f"user{i}", f"src{i}", float(i))
    assert len(t._sources) <= 100 and len(t._accounts) <= 100


async def test_failures_are_audited_and_throttled(agent: Agent) -> None:
    from tests.agentharness import audit_records

    await agent.claim()
    statuses = []
    for _ in range(8):
        status, _ = await agent.request("POST", "/api/v1/login", json_body={"username": "owner", "password": "x" * 14})
        statuses.append(status)
    assert statuses[:5] == [401] * 5 and 429 in statuses
    status, _ = await agent.request("POST", "/api/v1/login",
                                    json_body={"username": "owner", "password": STRONG_PASSWORD})
    assert status == 429  # even the right password waits: the delay is not an oracle
    logins = [r for r in audit_records(agent.svc) if r["event"] == "auth.login"]
    assert [r["outcome"] for r in logins].count("failure") == 5
    assert any(r["outcome"] == "denied" for r in logins)
    assert all(STRONG_PASSWORD not in str(r) and "x" * 14 not in str(r) for r in logins)
