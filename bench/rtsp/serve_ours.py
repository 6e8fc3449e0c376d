"""Our RTSPS server for the benchmark: real services, the media DemuxSource looping the file
(remuxed, not re-encoded), RtspCapability. Prints "ready PORT CAFILE" when listening."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from agent.capability import Role
from agent.config import build_config
from agent.media.frames import StreamHub
from agent.media.mediaconfig import AudioConfig, BackoffConfig, StreamConfig, VideoConfig
from agent.media.pipeline import StreamPipeline
from agent.rtsp.capability import RtspCapability
from agent.runtime import build_services

USER, PASSWORD = "bench", "granite-pelican-orchard-73"


class Media:
    def __init__(self, hubs: dict[str, StreamHub]) -> None:
        self.hubs = hubs
        self.audio_sink = None


async def main(path: str, port: int, https_port: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="rtsp-bench-"))
    cfg = build_config(root / "state", {"bind": "127.0.0.1", "rtsp": {"max_connections": 2048}},
                       https_port=https_port, rtsps_port=port)
    svc = build_services(cfg)
    await svc.users.create(USER, PASSWORD, Role.VIEWER)
    hub = StreamHub("main")
    scfg = StreamConfig("main", "file", VideoConfig("h264", 1920, 1080, 30, 4000, 60, "libx264"),
                        AudioConfig("pcmu", 8000, "line_in", "0", 0.0, False, 0), location=path)
    pipeline = StreamPipeline(hub, scfg, BackoffConfig())
    pipeline.start()
    cap = RtspCapability(svc, Media({"main": hub}))
    await cap.start()
    ca = root / "ca.pem"
    ca.write_bytes(svc.identity.trust_anchor_pem())
    await hub.wait_ready()
    print(f"ready {cap.tls_port} {ca}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
