"""Typed aiohttp application and request keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from agent.auth.sessions import Session
    from agent.auth.throttle import Throttle
    from agent.auth.users import User
    from agent.capability import Capability, Route
    from agent.services import Services

SERVICES_KEY: web.AppKey[Services] = web.AppKey("services")
CAPABILITIES_KEY: web.AppKey[list[Capability]] = web.AppKey("capabilities")
ROUTES_KEY: web.AppKey[list[Route]] = web.AppKey("routes")
THROTTLE_KEY: web.AppKey[Throttle] = web.AppKey("throttle")
# Request-scoped values set by the route guard.
USER_KEY: web.RequestKey[User] = web.RequestKey("user")
SESSION_KEY: web.RequestKey[Session] = web.RequestKey("session")

__all__ = ["CAPABILITIES_KEY", "ROUTES_KEY", "SERVICES_KEY", "SESSION_KEY", "THROTTLE_KEY", "USER_KEY",
           "Session", "User"]
