"""The contract between the agent core and each capability (management API, RTSP, OTA, factory).

A capability contributes HTTP routes (each with the minimum role, which is how the role x endpoint
matrix stays data), background services started on the agent's single event loop, status, and CLI
subcommands. ``agent.capabilities.load`` lists them explicitly.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from agent.services import Services


class Role(StrEnum):
    """Device roles; ONVIF names in docs/roles.md (Administrator / Operator / User)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, required: Role) -> bool:
        return self.rank >= required.rank


_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


class Access(StrEnum):
    """Who may call a route, besides roles."""

    PUBLIC = "public"  # no session needed (login, claim, openapi)
    ROLE = "role"  # needs a session with at least ``min_role``


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    min_role: Role | None  # None only with access=PUBLIC
    access: Access = Access.ROLE
    # True: allowed on an unclaimed device (only the claim endpoint and the OpenAPI document).
    before_claim: bool = False
    summary: str = ""
    # JSON Schema of the request body, if any: documented in the OpenAPI document and used by
    # the schemathesis run to generate inputs.
    body_schema: Mapping[str, Any] | None = None


class Capability(Protocol):
    name: str

    def routes(self) -> Sequence[Route]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


CapabilityFactory = Callable[["Services"], Capability]
CliRegistrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
