"""MediaCapability: owns the two StreamHubs, their pipelines and the talk-back AudioSink.

The RTSP capability receives this object in its constructor and uses only ``hub(name)`` and
``audio_sink`` (docs/contracts.md "Media <-> RTSP"). Settings changes are applied live: each
stream's effective config is recomputed and only a stream whose config changed is restarted.

The hubs, pipelines and the talk sink (and with them the frame, bitstream and pipeline modules)
are built on first use, normally in ``start()``, which the agent runs after HTTPS answers
(agent.capabilities.AFTER_LISTENING): constructing the capability before the listener only parses
the media config and each stream's effective config, so a bad config still stops the agent there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.capability import Role, Route
from agent.media.errors import MediaError
from agent.media.mediaconfig import MediaConfig, StreamConfig, parse_media_config, stream_config

if TYPE_CHECKING:
    from agent.media.frames import StreamHub
    from agent.media.pipeline import SourceFactory, StreamPipeline
    from agent.media.talk import DeviceAudioSink
    from agent.services import Services

log = logging.getLogger(__name__)

STREAMS = ("main", "sub")


def _import_internals() -> None:
    import agent.media.frames
    import agent.media.pipeline
    import agent.media.talk  # noqa: F401


class MediaCapability:
    name = "media"

    def __init__(self, services: Services, *, source_factory: SourceFactory | None = None) -> None:
        self._svc = services
        self.config: MediaConfig = parse_media_config(services.config.section("media"), services.state.root)
        assert self.config.talk_wav_dir is not None
        self._source_factory = source_factory
        # Each stream's config as of construction: the pipelines start from it even when they are
        # built later, so a settings change in between is applied (and audited) as a reconfigure.
        settings = services.settings.current()
        self._initial = {name: stream_config(settings, name, self.config) for name in STREAMS}
        self._hubs: dict[str, StreamHub] = {}
        self._pipelines: dict[str, StreamPipeline] = {}
        self._sink: DeviceAudioSink | None = None
        self.config_error: str | None = None
        self._apply_lock = asyncio.Lock()
        self._started = False
        services.settings.subscribe(self._on_settings)

    def _build(self) -> None:
        """Hubs, talk sink and pipelines, once (imports on the calling thread if start() has not)."""
        if self._sink is not None:
            return
        from agent.media.frames import StreamHub
        from agent.media.pipeline import StreamPipeline
        from agent.media.talk import DeviceAudioSink

        assert self.config.talk_wav_dir is not None
        hubs = {name: StreamHub(name, self.config.hub) for name in STREAMS}
        self._pipelines = {
            name: StreamPipeline(hubs[name], self._initial[name], self.config.backoff, self._source_factory,
                                 self._audit_event)
            for name in STREAMS
        }
        self._hubs = hubs
        self._sink = DeviceAudioSink(
            output=self.config.talk_output,
            wav_dir=self.config.talk_wav_dir,
            alsa_device=self.config.talk_alsa_device,
            max_seconds=self.config.talk_max_seconds,
            clock=self._svc.clock,
        )

    @property
    def audio_sink(self) -> DeviceAudioSink:
        self._build()
        assert self._sink is not None
        return self._sink

    def _audit_event(self, event: str, outcome: str, details: dict[str, Any]) -> None:
        try:
            self._svc.audit.append(event, outcome=outcome, details=details)
        except Exception:  # the audit log refusing must not stop the camera
            log.exception("audit of %s failed", event)

    def hub(self, name: str) -> StreamHub:
        self._build()
        try:
            return self._hubs[name]
        except KeyError:
            raise MediaError(f"no stream named {name!r}", code="media.no_such_stream", status=404) from None

    @property
    def hubs(self) -> Mapping[str, StreamHub]:
        """Every stream's hub by name (what agent.rtsp's MediaPort reads)."""
        self._build()
        return self._hubs

    def pipeline(self, name: str) -> StreamPipeline:
        self._build()
        return self._pipelines[name]

    def routes(self) -> Sequence[Route]:
        return [
            Route(
                "GET",
                "/api/v1/media/status",
                self._status_handler,
                Role.VIEWER,
                summary="Media pipelines: state, measured fps, restarts, last error per stream",
            )
        ]

    async def _status_handler(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.status())

    async def start(self) -> None:
        # In a worker thread: the event loop goes on with the listener's first TLS handshakes.
        await asyncio.to_thread(_import_internals)
        self._build()
        self._started = True
        for p in self._pipelines.values():
            p.start()

    async def stop(self) -> None:
        self._started = False
        self._build()
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in self._pipelines.values()))
        for hub in self._hubs.values():
            hub.close()

    async def _on_settings(self, old: Any, new: Any) -> None:
        await self.apply_settings(new)

    async def apply_settings(self, settings: Any) -> list[str]:
        """Restart exactly the streams whose effective config changed; returns their names."""
        async with self._apply_lock:
            try:
                wanted: dict[str, StreamConfig] = {name: stream_config(settings, name, self.config) for name in STREAMS}
            except MediaError as exc:
                # Settings validation should have refused this; keep the running streams.
                self.config_error = exc.message
                log.warning("media settings not applied: %s", exc.message)
                return []
            self.config_error = None
            self._build()
            changed = [name for name in STREAMS if wanted[name] != self._pipelines[name].config]
            # Restarting joins a PyAV thread: off the loop. Streams restart in parallel, and the
            # unchanged stream's pipeline is not touched at all.
            await asyncio.gather(*(asyncio.to_thread(self._pipelines[n].reconfigure, wanted[n]) for n in changed))
            if changed:
                await self._svc.audit.record("media.reconfigure", outcome="success", details={"streams": changed})
            return changed

    def status(self) -> dict[str, Any]:
        self._build()
        return {
            "streams": {name: p.status() for name, p in self._pipelines.items()},
            "talk": self.audio_sink.status(),
            "config_error": self.config_error,
        }
