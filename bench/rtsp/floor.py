"""The floor: an asyncio TLS server writing the same frame buffers (same sizes, same pacing) to
every connected client - what serving the stream costs with no RTSP, no packetization, no
fan-out bookkeeping. Prints "ready PORT" once listening."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

from bench.rtsp.mediafile import write_schedule


class Sink(asyncio.Protocol):
    def __init__(self, clients: set[asyncio.Transport]) -> None:
        self.clients = clients
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.t = transport
        self.clients.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.t is not None:
            self.clients.discard(self.t)


async def main(path: str, port: int, cert: str, key: str) -> None:
    schedule = write_schedule(Path(path))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    clients: set[asyncio.Transport] = set()
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Sink(clients), "127.0.0.1", port, ssl=ctx, backlog=1024)
    print(f"ready {port}", flush=True)
    period = schedule[-1][0] + 1 / 30
    start = loop.time()
    lap = 0
    while True:
        for t, data in schedule:
            delay = start + lap * period + t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            for tr in tuple(clients):
                tr.write(data)
        lap += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
