"""Users: roles, last-admin protection, password policy reasons, digest secrets sealed at rest."""

from __future__ import annotations

import hashlib

import pytest

from agent.auth.policy import PasswordRejected, check_password
from agent.auth.users import DIGEST_REALM
from tests.agentharness import STRONG_PASSWORD, Agent

POLICY_TABLE = [
    # (password, username, accepted, reason fragment)
    ("short-pw", "alice", False, "at least 12"),
    ("x" * 129, "alice", False, "at most 128"),
    ("password1234", "alice", False, "common"),
    ("adminadmin123", "alice", False, "common"),
    ("hikvision12345", "alice", False, "common"),
    ("aaaaaaaaaaaaaaaa", "alice", False, "common"),
    ("qwertyuiopasdf", "alice", False, "common"),
    ("my-name-is-alice-ok", "alice", False, "username"),
    ("serial-HM1234ABCD-x", "bob", False, "serial"),
    ("correct horse battery staple", "alice", True, ""),
    ("Zz9-plain-lowercase-ok", "alice", True, ""),
    ("ünïcödé pässwörd lông", "alice", True, ""),
]


@pytest.mark.parametrize(("password", "username", "accepted", "reason"), POLICY_TABLE)
def test_password_policy(password: str, username: str, accepted: bool, reason: str) -> None:
    if accepted:
        check_password(password, username=username, context=("HM1234ABCD", "RC-1000"))
    else:
        with pytest.raises(PasswordRejected, match=reason):
            check_password(password, username=username, context=("HM1234ABCD", "RC-1000"))


async def test_last_admin_cannot_be_removed_or_demoted(agent: Agent) -> None:
    admin = await agent.claim()
    status, body = await agent.request("DELETE", "/api/v1/users/owner", token=admin)
    assert status == 409 and body["error"]["code"] == "user.last_admin"
    status, body = await agent.request("PATCH", "/api/v1/users/owner", token=admin, json_body={"role": "viewer"})
    assert status == 409 and body["error"]["code"] == "user.last_admin"
    await agent.add_user(admin, "second", "admin")
    status, _ = await agent.request("PATCH", "/api/v1/users/owner", token=admin, json_body={"role": "viewer"})
    assert status == 200


async def test_create_user_errors_name_the_field(agent: Agent) -> None:
    admin = await agent.claim()
    cases = [
        ({"username": "Bad Name", "password": STRONG_PASSWORD, "role": "viewer"}, "username"),
        ({"username": "carol", "password": STRONG_PASSWORD, "role": "root"}, "role"),
        ({"username": "carol", "password": "carolcarol123", "role": "viewer"}, "password"),
    ]
    for body, field in cases:
        status, resp = await agent.request("POST", "/api/v1/users", token=admin, json_body=body)
        assert status == 400 and resp["error"]["field"] == field, resp
    await agent.add_user(admin, "carol", "viewer")
    status, resp = await agent.request("POST", "/api/v1/users", token=admin,
                                       json_body={"username": "carol", "password": STRONG_PASSWORD, "role": "viewer"})
    assert status == 409


async def test_digest_secrets_are_sealed(agent: Agent) -> None:
    await agent.claim()
    raw = agent.svc.state.users_file.read_bytes()
    for alg in ("md5", "sha256"):
        ha1 = hashlib.new(alg, f"owner:{DIGEST_REALM}:{STRONG_PASSWORD}".encode()).hexdigest()
        assert ha1.encode() not in raw
        assert agent.svc.users.digest_ha1("owner", DIGEST_REALM, "MD5" if alg == "md5" else "SHA-256") == ha1
    assert STRONG_PASSWORD.encode() not in raw
    assert b"$argon2id$v=19$m=19456,t=2,p=1$" in raw
