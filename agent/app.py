"""The HTTPS management application: app factory, middlewares, route guard.

Every route comes from a capability's ``Route`` table; ``guard`` wraps each handler with the
authentication and role check for that route, so what the table says is what is enforced and
what the OpenAPI document shows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web

from agent.appkeys import CAPABILITIES_KEY, ROUTES_KEY, SERVICES_KEY, SESSION_KEY, THROTTLE_KEY, USER_KEY
from agent.auth import claim
from agent.auth.sessions import SessionKind
from agent.auth.throttle import Throttle
from agent.capability import Access, Capability, Handler, Route
from agent.errors import AgentError, AuthenticationError, PermissionDenied
from agent.http.util import services
from agent.services import Services

log = logging.getLogger(__name__)

COOKIE_NAME = "__Host-cam_session"
CSRF_HEADER = "X-CSRF-Token"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Server": "camera",  # no product/version banner for scanners
}


def error_response(err: AgentError) -> web.Response:
    resp = web.json_response({"error": err.to_json()}, status=err.status)
    if err.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="camera"'
    retry = getattr(err, "retry_after", None)
    if retry is not None:
        resp.headers["Retry-After"] = str(max(1, int(retry + 0.999)))
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except AgentError as err:
        resp = error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request.too_large"}.get(exc.status, "http.error")
        resp = web.json_response({"error": {"code": code, "message": exc.reason}}, status=exc.status)
        if "Allow" in exc.headers:  # a 405 must list the allowed methods (RFC 9110 15.5.6)
            resp.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        resp = web.json_response({"error": {"code": "internal", "message": "internal error"}}, status=500)
    if not resp.prepared:
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
    return resp


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def guard(route: Route) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        svc = services(request)
        if svc.config.factory_ca is not None:
            from agent.factory import is_factory_state

            if is_factory_state(svc.state):
                raise PermissionDenied("device is in factory state", code="device.factory_state")
        if not route.before_claim and not claim.load(svc.state).claimed:
            raise PermissionDenied("device is not claimed yet", code="device.unclaimed")
        if route.access is Access.ROLE:
            token = _bearer(request)
            if token is not None:
                sess = svc.sessions.resolve(token, SessionKind.BEARER)
            else:
                cookie = request.cookies.get(COOKIE_NAME)
                if cookie is None:
                    raise AuthenticationError("authentication required")
                sess = svc.sessions.resolve(cookie, SessionKind.COOKIE)
                if request.method in _UNSAFE:
                    svc.sessions.check_csrf(sess, request.headers.get(CSRF_HEADER))
            user = svc.users.get(sess.username)
            if user is None:
                svc.sessions.revoke(sess.key)
                raise AuthenticationError("account no longer exists", code="auth.session_invalid")
            assert route.min_role is not None
            if not user.role.allows(route.min_role):
                raise PermissionDenied(f"requires role {route.min_role.value}", code="auth.forbidden")
            request[USER_KEY] = user
            request[SESSION_KEY] = sess
        return await route.handler(request)

    guarded.__name__ = getattr(route.handler, "__name__", "handler")
    return guarded


def create_app(svc: Services, capabilities: Sequence[Capability]) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=svc.config.limits.max_json_body,
        handler_args={"max_line_size": 8190, "max_field_size": 8190},
    )
    app[SERVICES_KEY] = svc
    app[CAPABILITIES_KEY] = list(capabilities)
    app[THROTTLE_KEY] = Throttle()
    routes: list[Route] = []
    seen: set[tuple[str, str]] = set()
    for cap in capabilities:
        for route in cap.routes():
            key = (route.method, route.path)
            if key in seen:
                raise RuntimeError(f"duplicate route {key}")
            if route.access is Access.ROLE and route.min_role is None:
                raise RuntimeError(f"route {key} needs a role")
            seen.add(key)
            routes.append(route)
            app.router.add_route(route.method, route.path, guard(route))
    app[ROUTES_KEY] = routes

    async def lifecycle(app: web.Application) -> object:
        started: list[Capability] = []
        try:
            for cap in capabilities:
                await cap.start()
                started.append(cap)
            yield
        finally:
            for cap in reversed(started):
                try:
                    await cap.stop()
                except Exception:
                    log.exception("stopping %s failed", cap.name)

    app.cleanup_ctx.append(lifecycle)  # type: ignore[arg-type]
    return app
