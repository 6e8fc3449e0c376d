"""The explicit list of the agent's capabilities and CLI command groups (no plugin magic).

Order matters: capabilities start in this order and stop in reverse, so media (the producer)
starts before RTSP (its consumer) and stops after it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from agent.capability import Capability

if TYPE_CHECKING:
    from agent.services import Services


def load(svc: Services) -> list[Capability]:
    from agent.api.core import CoreCapability
    from agent.audit.capability import AuditCapability
    from agent.factory.capability import FactoryCapability
    from agent.media.capability import MediaCapability
    from agent.ota.capability import OtaCapability
    from agent.rtsp.capability import RtspCapability

    media = MediaCapability(svc)
    return [
        CoreCapability(svc),
        AuditCapability(svc),
        FactoryCapability(svc),
        media,
        RtspCapability(svc, media),
        OtaCapability(svc),
    ]


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from agent.audit.cli import register_cli as audit_cli
    from agent.factory.cli import register_cli as factory_cli
    from agent.ota.cli import register_cli as ota_cli

    audit_cli(sub)
    ota_cli(sub)
    factory_cli(sub)
