"""The agent's route table without a running device (for generating docs/openapi.json)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from agent import capabilities
from agent.capability import Route
from agent.config import build_config
from agent.runtime import build_services


def offline_routes() -> list[Route]:
    with tempfile.TemporaryDirectory() as tmp:
        svc = build_services(build_config(Path(tmp), {}))
        try:
            return [r for cap in capabilities.load(svc) for r in cap.routes()]
        finally:
            svc.audit.close()
