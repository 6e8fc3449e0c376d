"""Small helpers for handlers: bounded JSON bodies, the caller, the source address."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from agent.appkeys import SERVICES_KEY, SESSION_KEY, USER_KEY
from agent.auth.sessions import Session
from agent.auth.users import User
from agent.errors import AuthenticationError, ValidationError
from agent.services import Services


def services(request: web.Request) -> Services:
    return request.app[SERVICES_KEY]


def current_user(request: web.Request) -> User:
    user = request.get(USER_KEY)
    if not isinstance(user, User):
        raise AuthenticationError("authentication required")
    return user


def current_session(request: web.Request) -> Session | None:
    sess = request.get(SESSION_KEY)
    return sess if isinstance(sess, Session) else None


def client_address(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"


async def json_body(request: web.Request, *, max_bytes: int | None = None) -> dict[str, Any]:
    """Read a JSON object body with a hard size bound; errors name what was wrong."""
    limit = max_bytes if max_bytes is not None else services(request).config.limits.max_json_body
    if request.content_type != "application/json":
        raise ValidationError("body must be application/json", code="request.content_type", status=415)
    if request.content_length is not None and request.content_length > limit:
        raise ValidationError(f"body larger than {limit} bytes", code="request.too_large", status=413)
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise ValidationError(f"body larger than {limit} bytes", code="request.too_large", status=413)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ValidationError("body is not valid JSON", code="request.bad_json") from None
    if not isinstance(doc, dict):
        raise ValidationError("body must be a JSON object", code="request.bad_json")
    return doc


def require_str(doc: dict[str, Any], field: str, *, max_len: int = 1024) -> str:
    v = doc.get(field)
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise ValidationError(f"{field} is required (a string of at most {max_len} characters)",
                              code="request.field", field=field)
    return v
