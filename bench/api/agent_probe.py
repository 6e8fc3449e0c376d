"""The agent's HTTPS app exactly as `camera-agent run` builds it, plus an event-loop lag probe.

Run as a subprocess by the benchmark (``python -m bench.api.agent_probe ...``) so it can be pinned
to one core. The only difference from agent.runtime.serve is the certificate: the bench passes the
same run-time generated cert/key it gives nginx (through agent.tlsconfig.server_context, i.e. the
agent's own TLS policy). A 10 ms ticker records how late each wake-up is.

Control on stdin, one command a line: ``reset`` clears the lag samples, ``report`` prints them as
one JSON line ({"n", "p50_ms", "p99_ms", "max_ms"}); end of input stops the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from aiohttp import web

from agent import capabilities as capability_list
from agent.app import create_app
from agent.auth import claim
from agent.config import build_config
from agent.runtime import build_services
from agent.tlsconfig import server_context
from bench.api.stats import summary_ms

TICK_S = 0.010


class LagProbe:
    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(TICK_S)
            self.samples.append(max(0.0, loop.time() - start - TICK_S))


async def serve(args: argparse.Namespace) -> None:
    config = build_config(args.state_dir, {"bind": "127.0.0.1"}, https_port=args.port, rtsps_port=args.rtsps_port)
    svc = build_services(config)
    if not claim.load(svc.state).claimed:
        claim.ensure_host_setup_code(svc.state, svc.secret)
    caps = capability_list.load(svc)
    if args.only:
        wanted = set(args.only.split(","))
        caps = [c for c in caps if c.name in wanted]
    app = create_app(svc, caps)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    ctx = server_context(args.chain_pem, args.key_pem)
    site = web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=ctx, backlog=512)
    await site.start()
    probe = LagProbe()
    ticker = asyncio.create_task(probe.run())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True, "capabilities": [c.name for c in caps]}), flush=True)

    async def commands() -> None:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = line.decode().strip()
            if cmd == "reset":
                probe.samples.clear()
                print(json.dumps({"ok": True}), flush=True)
            elif cmd == "report":
                print(json.dumps(summary_ms(probe.samples)), flush=True)
        stop.set()

    control = asyncio.create_task(commands())
    try:
        await stop.wait()
    finally:
        ticker.cancel()
        control.cancel()
        await runner.cleanup()
        svc.audit.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rtsps-port", type=int, required=True)
    parser.add_argument("--chain", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--only", help="comma-separated capability names (default: all registered)")
    args = parser.parse_args()
    args.chain_pem = Path(args.chain).read_bytes()
    args.key_pem = Path(args.key).read_bytes()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
