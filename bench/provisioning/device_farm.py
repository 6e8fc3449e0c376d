"""N host-mode devices in factory state in one process (the device side of the benchmark).

Prints one JSON line with the factory ports, serves until stdin closes. Runs in its own process so
the station's CPU measured by the benchmark is the station's alone.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from agent.audit.log import AuditLog
from agent.config import DeviceFacts
from agent.devicesecret import FileDeviceSecret
from agent.factory.device import FactoryDevice
from agent.factory.server import FactoryServer, factory_ssl_context
from agent.state import StateDir


async def main(root: Path, anchor_file: Path, count: int, prefix: str) -> None:
    anchor = anchor_file.read_bytes()  # noqa: ASYNC240 - startup, before anything is served
    ports = []
    servers = []
    for i in range(count):
        state = StateDir.open(root / f"dev{i}")
        secret = FileDeviceSecret(state.device_secret_file)
        audit = AuditLog(state.audit_dir, secret.derive("audit-mac"), clock=time.time)
        facts = DeviceFacts(serial=f"{prefix}{i:07d}", model="RC-1000")
        device = FactoryDevice(state, secret, facts, anchor, audit, time.time, "00" * 32)
        server = FactoryServer(device, factory_ssl_context(anchor, facts.serial), "127.0.0.1", 0)
        await server.start()
        servers.append(server)
        ports.append(server.port)
    print(json.dumps({"ports": ports}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
