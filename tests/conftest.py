from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.agentharness import Agent, running_agent


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    """An unclaimed host-mode agent (core + audit capabilities) on loopback."""
    async with running_agent(tmp_path / "state") as a:
        yield a


def need(*tools: str) -> None:
    """A missing external tool is a broken machine setup, not a reason to skip: fail loudly."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"required tools missing (make setup installs them): {missing}")


SMALL_VIDEO = {
    "main": {"codec": "h264", "width": 320, "height": 240, "fps": 15, "bitrate_kbps": 300, "gop": 15},
    "sub": {"codec": "h264", "width": 160, "height": 120, "fps": 10, "bitrate_kbps": 100, "gop": 10},
}


def seed_small_settings(state_dir: Path) -> None:
    """Pre-seed settings.json with small streams so full-agent tests stay cheap on 2 cores."""
    from agent.settings.model import DEFAULTS, merge
    from agent.state import StateDir, atomic_write_json

    state = StateDir.open(state_dir)
    atomic_write_json(state.settings_file, merge(DEFAULTS, {"video": SMALL_VIDEO}))


@pytest.fixture
async def full_agent(tmp_path: Path) -> AsyncIterator[Agent]:
    """An unclaimed agent with every capability (media with small synthetic streams, RTSPS, OTA)."""
    seed_small_settings(tmp_path / "state")
    async with running_agent(tmp_path / "state", only=None) as a:
        yield a
