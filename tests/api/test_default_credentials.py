"""No default credentials: the usual factory defaults fail on an unclaimed and a claimed device,
and no such literal appears in the shipped code."""

from __future__ import annotations

import pathlib
import re

from tests.agentharness import Agent

DEFAULTS = [
    ("admin", "admin"), ("admin", "12345"), ("admin", "123456"), ("admin", ""), ("admin", "password"),
    ("root", "root"), ("root", ""), ("root", "toor"), ("admin", "admin123"), ("user", "user"),
    ("guest", "guest"), ("admin", "1111"), ("admin", "888888"), ("supervisor", "supervisor"),
    ("admin", "hik12345"), ("service", "service"), ("owner", "admin"),
]


async def test_defaults_fail_unclaimed(agent: Agent) -> None:
    for user, pw in DEFAULTS:
        status, body = await agent.request("POST", "/api/v1/login", json_body={"username": user, "password": pw})
        assert status == 403 and body["error"]["code"] == "device.unclaimed"


async def test_defaults_fail_claimed(agent: Agent) -> None:
    await agent.claim("owner")
    for user, pw in DEFAULTS:
        status, body = await agent.request("POST", "/api/v1/login", json_body={"username": user, "password": pw})
        assert status in (401, 429) and "token" not in body, (user, pw, body)


async def test_defaults_refused_as_first_admin(agent: Agent) -> None:
    for user, pw in DEFAULTS:
        status, body = await agent.request("POST", "/api/v1/claim", json_body={
            "setup_code": agent.setup_code, "username": user if len(user) >= 3 else "adm", "password": pw})
        assert status == 400 and body["error"]["field"] == "password", (user, pw, body)


def test_no_credential_literals_in_sources() -> None:
    root = pathlib.Path(__file__).resolve().parents[2]
    pattern = re.compile(r"(password|passwd|pwd)\s*[:=]\s*['\"](admin|12345|password|root|1234|toor)['\"]", re.I)
    offenders = []
    for sub in ("agent", "bootverify", "provisioning", "board", "qemu", "buildroot"):
        for path in (root / sub).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".sh", ".json", ".conf", ".cfg", ".mk", ""}:
                text = path.read_text(errors="ignore")
                offenders += [f"{path}: {m.group(0)}" for m in pattern.finditer(text)]
    assert not offenders
