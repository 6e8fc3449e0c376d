"""Every cell of the role x endpoint matrix, against an expectation table written independently
of the route table (a wrong min_role in the code fails here)."""

from __future__ import annotations

from typing import Any

from agent.appkeys import ROUTES_KEY
from agent.capability import Access, Route
from tests.agentharness import Agent

# (method, path) -> the lowest role allowed; "public" needs no login. The test fails if the app
# has a route missing here, so every new endpoint must be placed in the matrix deliberately.
EXPECTED: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/claim"): "public",
    ("GET", "/api/v1/openapi.json"): "public",
    ("POST", "/api/v1/login"): "public",
    ("POST", "/api/v1/logout"): "viewer",
    ("GET", "/api/v1/session"): "viewer",
    ("POST", "/api/v1/me/password"): "viewer",
    ("GET", "/api/v1/status"): "viewer",
    ("GET", "/api/v1/identity/ca"): "viewer",
    ("GET", "/api/v1/settings"): "viewer",
    ("PATCH", "/api/v1/settings/video"): "operator",
    ("PATCH", "/api/v1/settings/audio"): "operator",
    ("PATCH", "/api/v1/settings/network"): "admin",
    ("PATCH", "/api/v1/settings/time"): "admin",
    ("PATCH", "/api/v1/settings/syslog"): "admin",
    ("PATCH", "/api/v1/settings/update"): "admin",
    ("PATCH", "/api/v1/settings"): "admin",
    ("GET", "/api/v1/users"): "admin",
    ("POST", "/api/v1/users"): "admin",
    ("GET", "/api/v1/users/{username}"): "admin",
    ("PATCH", "/api/v1/users/{username}"): "admin",
    ("DELETE", "/api/v1/users/{username}"): "admin",
    ("POST", "/api/v1/system/factory-reset"): "admin",
    ("GET", "/api/v1/audit"): "admin",
    ("GET", "/api/v1/audit/verify"): "admin",
    # streaming (RTSP capability)
    ("GET", "/api/v1/streams/sessions"): "viewer",
    ("DELETE", "/api/v1/streams/sessions/{id}"): "admin",
    # firmware (OTA capability)
    ("GET", "/api/v1/firmware"): "admin",
    ("POST", "/api/v1/firmware"): "admin",
    ("POST", "/api/v1/firmware/mark-good"): "admin",
    ("POST", "/api/v1/firmware/check"): "admin",
    # media (status of the sources)
    ("GET", "/api/v1/media/status"): "viewer",
}
RANK = {"anonymous": 0, "viewer": 1, "operator": 2, "admin": 3}
ROLES = ["anonymous", "viewer", "operator", "admin"]


def _concrete(path: str) -> str:
    return path.replace("{username}", "nobody-here").replace("{id}", "0")


async def _setup(agent: Agent) -> dict[str, str | None]:
    admin = await agent.claim()
    tokens: dict[str, str | None] = {"anonymous": None, "admin": admin}
    for role in ("viewer", "operator"):
        tokens[role] = await agent.add_user(admin, f"{role}1", role)
    return tokens


def _routes(agent: Agent) -> list[Route]:
    routes = list(agent.app[ROUTES_KEY])
    missing = {(r.method, r.path) for r in routes} - set(EXPECTED)
    assert not missing, f"routes without an expected role: {missing}"
    for r in routes:
        want = EXPECTED[(r.method, r.path)]
        assert (want == "public") == (r.access is Access.PUBLIC), (r.method, r.path)
        if want != "public":
            assert r.min_role is not None and r.min_role.value == want, (r.method, r.path, r.min_role)
    return routes


# Allowed calls to these would end the test's own state; their "allowed" cell is the table check.
NOT_CALLED_WHEN_ALLOWED = {("POST", "/api/v1/system/factory-reset")}
RELOGIN_AFTER = {("POST", "/api/v1/logout")}


async def test_each_cell(full_agent: Agent) -> None:
    agent = full_agent
    from tests.agentharness import STRONG_PASSWORD

    tokens = await _setup(agent)
    checked = 0
    for r in _routes(agent):
        want = EXPECTED[(r.method, r.path)]
        if want == "public":
            continue
        for role in ROLES:
            allowed = role != "anonymous" and RANK[role] >= RANK[want]
            if allowed and (r.method, r.path) in NOT_CALLED_WHEN_ALLOWED:
                continue
            body: Any = {} if r.method in ("POST", "PATCH", "PUT") else None
            status, resp = await agent.request(r.method, _concrete(r.path), token=tokens[role], json_body=body)
            code = resp.get("error", {}).get("code") if isinstance(resp, dict) else None
            if role == "anonymous":
                assert status == 401, (r.method, r.path, role, status, resp)
            elif not allowed:
                assert status == 403 and code == "auth.forbidden", (r.method, r.path, role, status, resp)
            else:
                assert status != 401 and code != "auth.forbidden", (r.method, r.path, role, status, resp)
            if allowed and (r.method, r.path) in RELOGIN_AFTER:
                user = "owner" if role == "admin" else f"{role}1"
                tokens[role] = await agent.login(user, STRONG_PASSWORD)
            checked += 1
    assert checked >= 20
