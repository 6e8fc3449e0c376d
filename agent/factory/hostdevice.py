"""A host-mode device that runs only what factory provisioning touches, as its own process.

    python -m agent.factory.hostdevice --state-dir DIR --factory-ca FILE --factory-port N --https-port M

It builds the real services (``agent.runtime.build_services``), runs ``FactoryCapability`` and an
HTTPS listener with the device's ``IdentityStore`` context (the same object the full agent serves
HTTPS and RTSPS with), so the kill -9 tests and the benchmark can start, kill and restart many
devices cheaply. ``camera-agent run`` does the same plus everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
from pathlib import Path

from aiohttp import web

from agent.config import build_config, load_config_file
from agent.factory.capability import FactoryCapability
from agent.runtime import build_services


async def _serve(args: argparse.Namespace) -> None:
    file_values = load_config_file(Path(args.config)) if args.config else {}
    if args.serial or args.model:
        device = dict(file_values.get("device", {}))
        if args.serial:
            device["serial"] = args.serial
        if args.model:
            device["model"] = args.model
        file_values = {**file_values, "device": device}
    config = build_config(
        Path(args.state_dir),
        file_values,
        https_port=args.https_port,
        factory_ca=Path(args.factory_ca),
        factory_port=args.factory_port,
    )
    config = dataclasses.replace(config, bind="127.0.0.1")
    svc = build_services(config)
    factory = FactoryCapability(svc)
    await factory.start()
    runner = web.AppRunner(web.Application(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.https_port, ssl_context=svc.identity.server_ssl_context())
    await site.start()
    print(f"ready serial={svc.config.device.serial} status={factory.status()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await factory.stop()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.factory.hostdevice")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--factory-ca", required=True)
    parser.add_argument("--factory-port", type=int, required=True)
    parser.add_argument("--https-port", type=int, required=True)
    parser.add_argument("--config")
    parser.add_argument("--serial")
    parser.add_argument("--model")
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
