"""A real agent for tests: the production app factory and TLS on a loopback port, in the test's
event loop, or ``camera-agent run`` as a subprocess. Shared by every capability's tests."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agent import capabilities as capability_list
from agent.app import create_app
from agent.auth import claim
from agent.config import build_config
from agent.runtime import build_services
from agent.services import Services
from agent.tlsconfig import client_context

STRONG_PASSWORD = "correct-horse-battery-staple-42"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Agent:
    svc: Services
    base: str
    https_port: int
    rtsps_port: int
    ca_file: Path
    setup_code: str | None
    ssl: ssl.SSLContext
    http: aiohttp.ClientSession
    app: web.Application
    tokens: dict[str, str] = field(default_factory=dict)

    async def request(self, method: str, path: str, *, token: str | None = None, json_body: Any = None,
                      headers: dict[str, str] | None = None, data: bytes | None = None) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.base + path, json=json_body, data=data, headers=hdrs,
                                     ssl=self.ssl) as resp:
            raw = await resp.read()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw
            return resp.status, body

    async def claim(self, username: str = "owner", password: str = STRONG_PASSWORD) -> str:
        status, body = await self.request("POST", "/api/v1/claim", json_body={
            "setup_code": self.setup_code, "username": username, "password": password})
        assert status == 201, body
        return await self.login(username, password)

    async def login(self, username: str, password: str) -> str:
        status, body = await self.request("POST", "/api/v1/login",
                                          json_body={"username": username, "password": password})
        assert status == 200, body
        token: str = body["token"]
        self.tokens[username] = token
        return token

    async def add_user(self, admin_token: str, username: str, role: str, password: str = STRONG_PASSWORD) -> str:
        status, body = await self.request("POST", "/api/v1/users", token=admin_token,
                                          json_body={"username": username, "password": password, "role": role})
        assert status == 201, body
        return await self.login(username, password)


@contextlib.asynccontextmanager
async def running_agent(
    state_dir: Path,
    *,
    only: Iterable[str] | None = ("core", "audit"),
    config: dict[str, Any] | None = None,
    factory_ca: Path | None = None,
    factory_port: int | None = None,
) -> AsyncIterator[Agent]:
    """Start the agent in this event loop. ``only`` selects capabilities by name (None = all)."""
    https_port, rtsps_port = free_port(), free_port()
    cfg = build_config(state_dir, dict(config or {"bind": "127.0.0.1"}), https_port=https_port,
                       rtsps_port=rtsps_port, factory_ca=factory_ca, factory_port=factory_port)
    svc = build_services(cfg)
    code = None
    if factory_ca is None and not claim.load(svc.state).claimed:
        claim.ensure_host_setup_code(svc.state, svc.secret)
        code = svc.state.setup_code_file.read_text().strip() if svc.state.setup_code_file.exists() else None
    caps = capability_list.load(svc)
    if only is not None:
        wanted = set(only)
        caps = [c for c in caps if c.name in wanted]
    app = create_app(svc, caps)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", https_port, ssl_context=svc.identity.server_ssl_context())
    await site.start()
    ca_file = state_dir / "test-ca.pem"
    ca_file.write_bytes(svc.identity.trust_anchor_pem())
    ctx = client_context(cafile=ca_file)
    async with aiohttp.ClientSession() as http:
        try:
            yield Agent(svc, f"https://127.0.0.1:{https_port}", https_port, rtsps_port, ca_file, code, ctx, http, app)
        finally:
            await runner.cleanup()
            svc.audit.close()


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    https_port: int
    rtsps_port: int
    log: Path

    @property
    def setup_code(self) -> str:
        return (self.state_dir / "setup-code").read_text().strip()

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "device-ca.pem"

    def stop(self) -> int:
        return stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM (the agent's graceful shutdown), SIGKILL if that takes longer than 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def start_agent_process(state_dir: Path, *extra: str, config: dict[str, Any] | None = None,
                        timeout: float = 60.0) -> AgentProcess:
    """``camera-agent run`` as a real process; waits until HTTPS accepts TLS handshakes."""
    https_port, rtsps_port = free_port(), free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(state_dir),
           "--https-port", str(https_port), "--rtsps-port", str(rtsps_port), "--bind", "127.0.0.1", *extra]
    if config is not None:
        cfg_file = state_dir.parent / f"{state_dir.name}-config.json"
        cfg_file.write_text(json.dumps(config))
        cmd += ["--config", str(cfg_file)]
    log = state_dir.parent / f"{state_dir.name}-agent.log"
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited: {log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", https_port), timeout=1):
                # The announcement follows every capability's start; device-ca.pem alone is no
                # sign of readiness on a restart, where the previous run left it behind.
                if "  HTTPS API:" in log.read_text(errors="replace"):
                    return AgentProcess(proc, state_dir, https_port, rtsps_port, log)
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"agent did not start: {log.read_text()[-3000:]}")


def audit_records(svc: Services) -> list[dict[str, Any]]:
    """Every record in the agent's audit log, oldest first (reads the segment files)."""
    from agent.audit.verify import list_segments

    out: list[dict[str, Any]] = []
    for _sid, path in list_segments(svc.state.audit_dir):
        for line in path.read_bytes().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out
