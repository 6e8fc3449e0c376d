"""`python -m bench.api`: the management plane against nginx, login latency, event-loop lag.

Layout on this 2-core machine: the agent (one process, one event loop) and nginx are pinned to
core 0, the load generators (wrk, this driver) to core 1. Prints a table and writes
docs/benchmarks-api.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from agent.tlsconfig import client_context
from bench.api import certs, wrk
from bench.api.loadgen import Client, FloodResult, login_latency, wrong_login_flood
from bench.api.nginx import Nginx
from bench.api.report import RpsRow, render
from bench.api.stats import summary_ms

REPO = Path(__file__).resolve().parents[2]
SERVER_CPU, LOAD_CPU = 0, 1
IDLE_S = 5.0
PASSWORD = "bench-only-passphrase-" + os.urandom(6).hex()  # generated per run, never stored
ARGON2 = "Argon2id m=19 MiB, t=2, p=1 (agent/auth/hashing.py Argon2Params)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AgentProc:
    proc: subprocess.Popen[bytes]
    port: int
    state_dir: Path
    capabilities: list[str]

    @classmethod
    def start(cls, state_dir: Path, chain: Path, key: Path, only: str | None) -> AgentProc:
        port = free_port()
        cmd = ["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "bench.api.agent_probe",
               "--state-dir", str(state_dir), "--port", str(port), "--rtsps-port", str(free_port()),
               "--chain", str(chain), "--key", str(key)]
        if only:
            cmd += ["--only", only]
        proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        line = cls._readline(proc)
        if not line.get("ready"):
            raise RuntimeError(f"agent probe did not start: {line}")
        return cls(proc, port, state_dir, list(line["capabilities"]))

    @staticmethod
    def _readline(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        out: IO[bytes] | None = proc.stdout
        assert out is not None
        raw = out.readline()
        if not raw:
            raise RuntimeError("agent probe exited")
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    def command(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()
        return self._readline(self.proc)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def prepare_accounts(client: Client, state_dir: Path) -> dict[str, str]:
    """Claim the device and create the accounts the benchmarks use; returns bearer tokens."""
    code = (state_dir / "setup-code").read_text().strip()
    async with aiohttp.ClientSession() as http:
        status, body = await client.call(http, "POST", "/api/v1/claim",
                                         body={"setup_code": code, "username": "owner", "password": PASSWORD})
        if status != 201:
            raise RuntimeError(f"claim failed: {status} {body}")
        admin = await client.login(http, "owner", PASSWORD)
        tokens = {"admin": admin}
        for user in ("loadgen", "timer"):
            status, body = await client.call(http, "POST", "/api/v1/users", token=admin,
                                             body={"username": user, "password": PASSWORD, "role": "viewer"})
            if status != 201:
                raise RuntimeError(f"create {user}: {status} {body}")
            tokens[user] = await client.login(http, user, PASSWORD)
        return tokens


async def fetch(client: Client, path: str, token: str) -> bytes:
    async with aiohttp.ClientSession() as http, http.get(client.base + path, ssl=client.ssl,
                                                         headers={"Authorization": f"Bearer {token}"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status}")
        return await resp.read()


def argon2_reference(samples: int = 10) -> dict[str, float]:
    """One Argon2id verification with the agent's parameters, in this process (core 1): the
    floor under the login latency."""
    from argon2 import PasswordHasher, Type
    from argon2.exceptions import VerifyMismatchError

    from agent.auth.hashing import Argon2Params

    p = Argon2Params()
    ph = PasswordHasher(time_cost=p.time_cost, memory_cost=p.memory_cost_kib, parallelism=p.parallelism, type=Type.ID)
    stored = ph.hash(PASSWORD)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        try:
            ph.verify(stored, "not the password")
        except VerifyMismatchError:
            pass
        times.append(time.perf_counter() - start)
    return summary_ms(times)


def tool_version(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except OSError:
        return "missing"
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each wrk run")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--logins", type=int, default=30, help="sequential successful logins timed")
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument("--flood-rate", type=float, default=50.0, help="wrong logins per second")
    parser.add_argument("--only", default="core,audit",
                        help="capabilities to load for the request-rate runs ('' = all registered)")
    parser.add_argument("--lag-only", default="",
                        help="capabilities for the event-loop lag runs ('' = all registered, as on a device)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks-api.md")
    args = parser.parse_args(argv)
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is missing (make setup)", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores (server and load generator pinned apart)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CPU})
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o711)  # nginx workers (not root) traverse it to reach their prefix
        chain, key, ca = certs.generate().write(tmp)
        state = tmp / "state"
        state.mkdir(mode=0o700)
        agent = AgentProc.start(state, chain, key, args.only or None)
        rps_caps = agent.capabilities
        lag_caps: list[str] = []
        nginx_procs: list[Nginx] = []
        try:
            client = Client(f"https://127.0.0.1:{agent.port}", client_context(cafile=ca))
            tokens = asyncio.run(prepare_accounts(client, state))
            body = asyncio.run(fetch(client, "/api/v1/session", tokens["loadgen"]))
            n1 = Nginx(tmp / "nginx1", free_port(), chain, key, body, "1", [SERVER_CPU])
            nginx_procs.append(n1)
            nauto = Nginx(tmp / "nginxauto", free_port(), chain, key, body, "auto", [SERVER_CPU, LOAD_CPU])
            nginx_procs.append(nauto)
            rows: list[RpsRow] = []
            for conns in (int(c) for c in args.connections.split(",")):
                a = wrk.run(f"{client.base}/api/v1/session", conns, args.seconds, tokens["loadgen"], [LOAD_CPU])
                b = wrk.run(f"https://127.0.0.1:{n1.port}/api/v1/session", conns, args.seconds, tokens["loadgen"],
                            [LOAD_CPU])
                c = wrk.run(f"https://127.0.0.1:{nauto.port}/api/v1/session", conns, args.seconds, tokens["loadgen"],
                            [LOAD_CPU])
                for name, res in (("agent", a), ("nginx-1", b), ("nginx-auto", c)):
                    if res.non_2xx or res.errors:
                        raise RuntimeError(f"{name} at {conns} connections: {res.non_2xx} non-2xx answers, "
                                           f"{res.errors} socket errors - the run measured something else")
                row = RpsRow(conns, a, b, c)
                rows.append(row)
                print(row.line(), flush=True)
            for n in nginx_procs:
                n.stop()
            nginx_procs.clear()
            logins = asyncio.run(login_latency(client, "timer", PASSWORD, args.logins))
            argon2_ref = argon2_reference()
            print(f"login p50 {logins['p50_ms']:.1f} ms  p99 {logins['p99_ms']:.1f} ms  (n={logins['n']:.0f})")
            agent.stop()
            # The lag runs use a second agent with every capability (streaming included), as on a
            # device: the question is whether the loop that also serves RTSPS stays responsive.
            state2 = tmp / "state-lag"
            state2.mkdir(mode=0o700)
            agent = AgentProc.start(state2, chain, key, args.lag_only or None)
            lag_caps = agent.capabilities
            client = Client(f"https://127.0.0.1:{agent.port}", client_context(cafile=ca))
            tokens = asyncio.run(prepare_accounts(client, state2))
            time.sleep(8.0)  # let capabilities settle (encoders start)
            agent.command("reset")
            time.sleep(IDLE_S)
            idle = agent.command("report")
            floods: list[tuple[FloodResult, dict[str, Any]]] = []
            # One keep-alive connection per source address, then as many as the attacker likes.
            # Fresh addresses and user names for the second flood: the throttle remembers the first.
            for flood_no, per_source in enumerate((1, 0)):
                sources = [f"127.0.{flood_no}.{i}" for i in range(2, 21)]
                agent.command("reset")
                flood = asyncio.run(wrong_login_flood(client, tokens["admin"], rate=args.flood_rate,
                                                      seconds=args.flood_seconds, sources=sources,
                                                      per_source=per_source, user_prefix=f"guess{flood_no}x"))
                lag = agent.command("report")
                floods.append((flood, lag))
                print(f"flood ({per_source or 'unbounded'} conn/source): loop lag p99 {lag['p99_ms']:.2f} ms "
                      f"max {lag['max_ms']:.2f} ms; statuses {dict(flood.statuses)}; "
                      f"poller p99 {flood.poll['p99_ms']:.1f} ms", flush=True)
            print(f"loop lag idle: p99 {idle['p99_ms']:.2f} ms max {idle['max_ms']:.2f} ms")
        finally:
            for n in nginx_procs:
                n.stop()
            agent.stop()
    env = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load": f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}",
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "--version"]),
        "aiohttp": aiohttp.__version__,
        "openssl": tool_version(["openssl", "version"]),
        "capabilities": ", ".join(rps_caps),
        "lag_capabilities": ", ".join(lag_caps),
        "argon2": ARGON2,
        "argon2_ref": f"{argon2_ref['p50_ms']:.1f} ms p50 / {argon2_ref['max_ms']:.1f} ms max",
        "seconds": f"{args.seconds:g}",
        "runtime": f"{time.monotonic() - started:.0f} s",
    }
    text = render(env, rows, logins, idle, floods, args.flood_rate, args.flood_seconds)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
