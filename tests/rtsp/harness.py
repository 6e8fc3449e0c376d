"""A real RTSPS server for integration tests: real services (users, audit, identity, settings
from ``agent.runtime.build_services``), real media pipelines (synthetic camera with burned-in
counter, libx264, AAC / G.711), the real WAV talk sink, run on its own event loop thread so tests
can drive external clients (ffmpeg, GStreamer) as subprocesses."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.capability import Role
from agent.config import build_config
from agent.media.frames import StreamHub
from agent.media.mediaconfig import AudioConfig, BackoffConfig, StreamConfig, VideoConfig
from agent.media.pipeline import StreamPipeline
from agent.media.talk import DeviceAudioSink
from agent.rtsp.capability import RtspCapability
from agent.runtime import build_services
from agent.services import Services

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

PASSWORDS = {
    "admin": "tangerine-violet-harbour-97",
    "oper": "marble-kestrel-lantern-31",
    "oper2": "cobalt-meadow-saffron-58",
    "viewer": "quartz-willow-beacon-64",
}
ROLES = {"admin": Role.ADMIN, "oper": Role.OPERATOR, "oper2": Role.OPERATOR, "viewer": Role.VIEWER}


def stream_configs(main_size: tuple[int, int] = (640, 360), sub_size: tuple[int, int] = (320, 180)
                   ) -> dict[str, StreamConfig]:
    def video(size: tuple[int, int], fps: int, kbps: int) -> VideoConfig:
        return VideoConfig(codec="h264", width=size[0], height=size[1], fps=fps, bitrate_kbps=kbps,
                           gop=fps, encoder="libx264")

    return {
        "main": StreamConfig("main", "synthetic", video(main_size, 15, 800),
                             AudioConfig("aac", 16000, "external_mic", "1000", 0.0, False, 32)),
        "sub": StreamConfig("sub", "synthetic", video(sub_size, 10, 200),
                            AudioConfig("pcmu", 8000, "external_mic", "440", 0.0, False, 0)),
    }


@dataclass
class Media:
    hubs: Mapping[str, StreamHub]
    audio_sink: DeviceAudioSink
    pipelines: list[StreamPipeline] = field(default_factory=list)


class ServerThread:
    def __init__(self, root: Path, *, rtsp_section: Mapping[str, Any] | None = None,
                 streams: Mapping[str, StreamConfig] | None = None) -> None:
        self.root = root
        self.rtsp_section = dict(rtsp_section or {})
        self.streams = dict(streams or stream_configs())
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="rtsp-test-loop", daemon=True)
        self.cap: RtspCapability | None = None
        self.svc: Services | None = None
        self.media: Media | None = None
        self.port = 0

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def run(self, fn: Any, *args: Any) -> Any:
        async def _do() -> Any:
            return fn(*args)

        return self.call(_do())

    def start(self) -> ServerThread:
        self._thread.start()
        self.call(self._start(), timeout=60)
        return self

    async def _start(self) -> None:
        cfg = build_config(self.root / "state", {"rtsp": self.rtsp_section, "bind": "127.0.0.1"},
                           https_port=free_port(), rtsps_port=free_port())
        svc = build_services(cfg)
        for name, pw in PASSWORDS.items():
            await svc.users.create(name, pw, ROLES[name])
        hubs = {name: StreamHub(name) for name in self.streams}
        sink = DeviceAudioSink(output="wav", wav_dir=self.root / "talk")
        media = Media(hubs, sink)
        for name, scfg in self.streams.items():
            p = StreamPipeline(hubs[name], scfg, BackoffConfig())
            p.start()
            media.pipelines.append(p)
        cap = RtspCapability(svc, media)
        await cap.start()
        assert cap.tls_port is not None
        self.port = cap.tls_port
        self.cap, self.svc, self.media = cap, svc, media

    def ca_pem(self) -> bytes:
        assert self.svc is not None
        return self.svc.identity.trust_anchor_pem()

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit record so far, read back through the log's own verifier."""
        import json

        assert self.svc is not None
        out = []
        for seg in sorted(self.svc.state.audit_dir.glob("seg-*.jsonl")):
            for line in seg.read_bytes().splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out

    def stop(self) -> None:
        async def _stop() -> None:
            assert self.cap is not None and self.media is not None and self.svc is not None
            await self.cap.stop()
            for p in self.media.pipelines:
                await asyncio.to_thread(p.stop)
            for h in self.media.hubs.values():
                h.close()

        try:
            self.call(_stop(), timeout=60)
        finally:
            if self.svc is not None:
                self.svc.audit.close()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
