"""Client side of the login benchmarks (aiohttp over TLS, validating the bench CA)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.api.stats import summary_ms


@dataclass
class Client:
    base: str
    ssl: ssl.SSLContext

    async def call(self, http: aiohttp.ClientSession, method: str, path: str, *, token: str | None = None,
                   body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with http.request(method, self.base + path, json=body, headers=headers, ssl=self.ssl) as resp:
            data = await resp.json(content_type=None) if resp.content_length != 0 else None
            return resp.status, data

    async def login(self, http: aiohttp.ClientSession, username: str, password: str) -> str:
        status, body = await self.call(http, "POST", "/api/v1/login", body={"username": username, "password": password})
        if status != 200:
            raise RuntimeError(f"login {username}: {status} {body}")
        token: str = body["token"]
        return token


async def login_latency(client: Client, username: str, password: str, count: int) -> dict[str, float]:
    """Sequential successful logins on one keep-alive connection; seconds per login."""
    samples: list[float] = []
    async with aiohttp.ClientSession() as http:
        await client.login(http, username, password)  # warm the connection and the code paths
        for _ in range(count):
            start = time.perf_counter()
            await client.login(http, username, password)
            samples.append(time.perf_counter() - start)
    return summary_ms(samples)


@dataclass
class FloodResult:
    sent: int
    per_source: int = 0
    sources: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    poll: dict[str, float] = field(default_factory=dict)


async def wrong_login_flood(client: Client, token: str, *, rate: float, seconds: float, sources: list[str],
                            per_source: int, user_prefix: str = "guess", poll_interval: float = 0.010,
                            ) -> FloodResult:
    """``rate`` wrong logins per second, round-robin over client sockets bound to ``sources``
    (at most ``per_source`` connections each, 0 = as many as requests in flight), while a
    legitimate client polls GET /api/v1/session every ``poll_interval`` (its latency is the lag
    as seen from outside)."""
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(src, 0), limit=per_source))
                for src in sources]
    result = FloodResult(sent=0, per_source=per_source, sources=list(sources))
    loop = asyncio.get_running_loop()
    poll_samples: list[float] = []
    stop = asyncio.Event()

    async def one(i: int) -> None:
        http = sessions[i % len(sessions)]
        try:
            status, _ = await client.call(http, "POST", "/api/v1/login",
                                          body={"username": f"{user_prefix}{i % 7}", "password": f"wrong-password-{i}"})
        except aiohttp.ClientError:
            status = 0
        result.statuses[status] += 1

    async def poll() -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                start = time.perf_counter()
                status, _ = await client.call(http, "GET", "/api/v1/session", token=token)
                if status == 200:
                    poll_samples.append(time.perf_counter() - start)
                await asyncio.sleep(poll_interval)

    poller = asyncio.create_task(poll())
    tasks: list[asyncio.Task[None]] = []
    start = loop.time()
    try:
        i = 0
        while loop.time() - start < seconds:
            # Fixed schedule, not closed-loop: a slow device does not slow the attacker down.
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
            i += 1
        result.sent = i
        await asyncio.gather(*tasks)
        result.elapsed = loop.time() - start
    finally:
        stop.set()
        await poller
        for s in sessions:
            await s.close()
    result.poll = summary_ms(poll_samples)
    return result
