"""Media, RTSPS and OTA start after the HTTPS listener (agent.capabilities.AFTER_LISTENING): the app's
lifecycle must not start them, release_held starts them in list order, and stop only stops what
was started."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from agent import capabilities
from agent.capability import Capability, Route


class Recorder:
    """A capability that records its lifecycle calls."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self._calls = calls

    def routes(self) -> Sequence[Route]:
        return []

    async def start(self) -> None:
        self._calls.append(f"start {self.name}")

    async def stop(self) -> None:
        self._calls.append(f"stop {self.name}")

    def status(self) -> dict[str, Any]:
        return {"name": self.name}


def test_held_capabilities_start_on_release_in_order() -> None:
    calls: list[str] = []
    caps: list[Capability] = [Recorder(n, calls) for n in ("core", "audit", "media", "rtsp", "ota")]
    held = capabilities.hold_back(caps)
    assert [c.name for c in held] == ["core", "audit", "media", "rtsp", "ota"]
    assert [type(c) is capabilities.StartLater for c in held] == [False, False, True, True, True]
    assert held[2].status() == {"name": "media"}

    async def scenario() -> None:
        for c in held:  # what create_app's lifecycle does at runner.setup()
            await c.start()
        assert calls == ["start core", "start audit"]
        await capabilities.release_held(held)
        assert calls[2:] == ["start media", "start rtsp", "start ota"]
        await capabilities.release_held(held)  # idempotent
        assert len(calls) == 5
        for c in reversed(held):
            await c.stop()
        assert calls[5:] == ["stop ota", "stop rtsp", "stop media", "stop audit", "stop core"]

    asyncio.run(scenario())


def test_unreleased_capabilities_are_not_stopped() -> None:
    calls: list[str] = []
    held = capabilities.hold_back([Recorder("media", calls)])

    async def scenario() -> None:
        await held[0].start()
        await held[0].stop()

    asyncio.run(scenario())
    assert calls == []
