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
