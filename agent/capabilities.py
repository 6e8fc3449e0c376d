"""The explicit list of the agent's capabilities and CLI command groups (no plugin magic)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from agent.capability import Capability

if TYPE_CHECKING:
    from agent.services import Services


def load(svc: Services) -> list[Capability]:
    from agent.api.core import CoreCapability
    from agent.audit.capability import AuditCapability

    caps: list[Capability] = [CoreCapability(svc), AuditCapability(svc)]
    return caps


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from agent.audit.cli import register_cli as audit_cli

    audit_cli(sub)
