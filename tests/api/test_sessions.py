"""Sessions: cookie flags, CSRF, bearer tokens, logout, revocation on password change, timeouts."""

from __future__ import annotations

import pytest

from agent.app import COOKIE_NAME, CSRF_HEADER
from agent.auth.sessions import SessionKind, SessionStore
from agent.errors import AuthenticationError
from tests.agentharness import STRONG_PASSWORD, Agent


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_idle_and_absolute_timeouts() -> None:
    clock = FakeClock()
    store = SessionStore(clock, idle_s=60, absolute_s=300, max_per_user=4)
    token, _ = store.create("alice", SessionKind.BEARER, "127.0.0.1")
    clock.t += 59
    store.resolve(token, SessionKind.BEARER)
    clock.t += 61
    with pytest.raises(AuthenticationError):
        store.resolve(token, SessionKind.BEARER)
    token, _ = store.create("alice", SessionKind.BEARER, "127.0.0.1")
    for _ in range(6):  # active all the time, still ends at the absolute limit
        clock.t += 50
        store.resolve(token, SessionKind.BEARER)
    clock.t += 50
    with pytest.raises(AuthenticationError):
        store.resolve(token, SessionKind.BEARER)


def test_tokens_are_opaque_and_fresh() -> None:
    store = SessionStore(FakeClock(), idle_s=60, absolute_s=300, max_per_user=4)
    a, sa = store.create("alice", SessionKind.COOKIE, "x")
    b, sb = store.create("alice", SessionKind.COOKIE, "x")
    assert a != b and len(a) >= 43  # 32 random bytes, base64url
    assert a not in sa.key and sa.key != sb.key  # only digests are kept
    with pytest.raises(AuthenticationError):
        store.resolve(a, SessionKind.BEARER)  # a cookie id is not a bearer token


def test_sessions_per_user_are_bounded() -> None:
    store = SessionStore(FakeClock(), idle_s=60, absolute_s=300, max_per_user=3)
    tokens = [store.create("alice", SessionKind.BEARER, "x")[0] for _ in range(5)]
    with pytest.raises(AuthenticationError):
        store.resolve(tokens[0], SessionKind.BEARER)
    store.resolve(tokens[-1], SessionKind.BEARER)


async def test_cookie_flags_and_csrf(agent: Agent) -> None:
    await agent.claim()
    async with agent.http.post(agent.base + "/api/v1/login", ssl=agent.ssl,
                               json={"username": "owner", "password": STRONG_PASSWORD}) as resp:
        assert resp.status == 200
        body = await resp.json()
        raw = resp.headers.getall("Set-Cookie")
    cookie = next(c for c in raw if c.startswith(COOKIE_NAME))
    low = cookie.lower()
    assert "secure" in low and "httponly" in low and "samesite=strict" in low and "path=/" in low
    value = cookie.split(";")[0].split("=", 1)[1]
    assert value != body["token"]
    jar = {"Cookie": f"{COOKIE_NAME}={value}"}
    status, _ = await agent.request("GET", "/api/v1/session", headers=jar)
    assert status == 200
    # A state-changing request on the cookie alone (what a cross-site form can do) is refused.
    status, resp_body = await agent.request("PATCH", "/api/v1/settings/video", headers=jar,
                                            json_body={"main": {"fps": 25}})
    assert status == 403 and resp_body["error"]["code"] == "auth.csrf"
    status, _ = await agent.request("PATCH", "/api/v1/settings/video",
                                    headers={**jar, CSRF_HEADER: body["csrf_token"]}, json_body={"main": {"fps": 25}})
    assert status == 200


async def test_logout_and_password_change_revoke(agent: Agent) -> None:
    admin = await agent.claim()
    other = await agent.login("owner", STRONG_PASSWORD)
    third = await agent.login("owner", STRONG_PASSWORD)
    status, _ = await agent.request("POST", "/api/v1/logout", token=third)
    assert status == 200
    assert (await agent.request("GET", "/api/v1/session", token=third))[0] == 401
    new_pw = "another-long-passphrase-77"
    status, body = await agent.request("POST", "/api/v1/me/password", token=admin,
                                       json_body={"current_password": STRONG_PASSWORD, "new_password": new_pw})
    assert status == 200 and body["other_sessions_revoked"] >= 1
    assert (await agent.request("GET", "/api/v1/session", token=other))[0] == 401
    assert (await agent.request("GET", "/api/v1/session", token=admin))[0] == 200
    status, _ = await agent.request("POST", "/api/v1/login",
                                    json_body={"username": "owner", "password": STRONG_PASSWORD})
    assert status == 401
    await agent.login("owner", new_pw)


async def test_wrong_current_password_refused(agent: Agent) -> None:
    admin = await agent.claim()
    status, body = await agent.request("POST", "/api/v1/me/password", token=admin,
                                       json_body={"current_password": "not-the-password-at-all",
                                                  "new_password": "another-long-passphrase-77"})
    assert status == 403 and body["error"]["code"] == "auth.wrong_password"
