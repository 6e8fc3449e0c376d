"""Core management endpoints. The role each one needs is in ``routes()`` - that table is the
role x endpoint matrix (tests/api/test_role_matrix.py checks every cell)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from agent.api import schemas
from agent.app import COOKIE_NAME
from agent.appkeys import CAPABILITIES_KEY, ROUTES_KEY, THROTTLE_KEY
from agent.auth import claim
from agent.auth.policy import check_password, check_username
from agent.auth.sessions import SessionKind
from agent.auth.users import parse_role
from agent.capability import Access, Role, Route
from agent.errors import AgentError, AuthenticationError, NotFound, PermissionDenied, ValidationError
from agent.http.util import client_address, current_session, current_user, json_body, require_str
from agent.services import Services
from agent.settings.model import SECTION_ROLES
from agent.state import read_json

_STARTED = time.monotonic()


class Throttled(AgentError):
    code = "auth.throttled"
    status = 429

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed attempts; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


def _user_json(username: str, role: Role) -> dict[str, str]:
    return {"username": username, "role": role.value}


class CoreCapability:
    name = "core"

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self._attestation: dict[str, Any] | None = None

    async def start(self) -> None:
        # The boot attestation record is written by bootverify in the initramfs (absent in host
        # mode). It is shown in status and entered into the audit log once per agent start.
        try:
            doc = read_json(self._svc.state.attestation_file, max_bytes=64 * 1024)
        except FileNotFoundError:
            return
        except AgentError as err:
            await self._svc.audit.record("boot.attestation", outcome="failure", details={"reason": err.code})
            return
        if not isinstance(doc, dict):
            await self._svc.audit.record("boot.attestation", outcome="failure", details={"reason": "not an object"})
            return
        self._attestation = doc
        result = str(doc.get("result", "red"))
        outcome = {"green": "success", "yellow": "info"}.get(result, "failure")
        keep = ("result", "reasons", "slot", "profile", "fit_configuration", "firmware_version", "security_version",
                "rootfs_root_hash", "fallback")
        await self._svc.audit.record("boot.attestation", outcome=outcome, details={k: doc[k] for k in keep if k in doc})

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"users": self._svc.users.count(), "sessions": len(self._svc.sessions.active())}
        warnings = []
        if self._attestation is not None:
            out["boot_attestation"] = self._attestation
            if self._attestation.get("result") != "green":
                warnings.append(f"boot attestation is {self._attestation.get('result')}: "
                                f"{', '.join(map(str, self._attestation.get('reasons', [])))}")
            if self._attestation.get("profile") == "dev":
                warnings.append("DEV PROFILE: debug console enabled, not for deployment")
        out["warnings"] = warnings
        return out

    def routes(self) -> Sequence[Route]:
        V, OP, A = Role.VIEWER, Role.OPERATOR, Role.ADMIN
        r = [
            Route("POST", "/api/v1/claim", self.claim, None, Access.PUBLIC, before_claim=True,
                  summary="Create the first admin with the device's one-time setup code", body_schema=schemas.CLAIM),
            Route("GET", "/api/v1/openapi.json", self.openapi, None, Access.PUBLIC, before_claim=True,
                  summary="This API's OpenAPI document"),
            Route("POST", "/api/v1/login", self.login, None, Access.PUBLIC, summary="Log in",
                  body_schema=schemas.LOGIN),
            Route("POST", "/api/v1/logout", self.logout, V, summary="End this session"),
            Route("GET", "/api/v1/session", self.whoami, V, summary="The caller and session"),
            Route("POST", "/api/v1/me/password", self.change_own_password, V, summary="Change own password",
                  body_schema=schemas.CHANGE_PASSWORD),
            Route("GET", "/api/v1/users", self.list_users, A, summary="List users"),
            Route("POST", "/api/v1/users", self.create_user, A, summary="Create a user",
                  body_schema=schemas.CREATE_USER),
            Route("GET", "/api/v1/users/{username}", self.get_user, A, summary="Read a user"),
            Route("PATCH", "/api/v1/users/{username}", self.update_user, A,
                  summary="Change a user's role or reset the password", body_schema=schemas.UPDATE_USER),
            Route("DELETE", "/api/v1/users/{username}", self.delete_user, A, summary="Delete a user"),
            Route("GET", "/api/v1/settings", self.get_settings, V, summary="All settings"),
            Route("PATCH", "/api/v1/settings", self.patch_settings, A,
                  summary="Change several sections at once (all or nothing)", body_schema=schemas.ALL_SETTINGS),
            Route("GET", "/api/v1/status", self.get_status, V, summary="Device status"),
            Route("GET", "/api/v1/identity/ca", self.get_ca, V, summary="The CA that issued the TLS certificate"),
            Route("POST", "/api/v1/system/factory-reset", self.factory_reset, A,
                  summary="Erase users and settings; the device becomes claimable with its label code"),
        ]
        for section, role_name in SECTION_ROLES.items():
            r.append(Route("PATCH", f"/api/v1/settings/{section}", self._section_patch(section),
                           {"operator": OP, "admin": A}[role_name], summary=f"Change {section} settings",
                           body_schema=schemas.SECTIONS[section]))
        return r

    # --- claim and login ----------------------------------------------------------------------
    async def claim(self, request: web.Request) -> web.Response:
        svc = self._svc
        src = client_address(request)
        throttle = request.app[THROTTLE_KEY]
        now = svc.clock()
        wait = throttle.wait_time("<claim>", src, now)
        if wait > 0:
            await svc.audit.record("claim", outcome="denied", source=src, details={"reason": "throttled"})
            raise Throttled(wait)
        throttle.failure("<claim>", src, now)  # counted before the check, as for logins
        body = await json_body(request)
        try:
            claim.check_code(svc.state, svc.secret, body.get("setup_code"))
        except claim.ClaimError as err:
            await svc.audit.record("claim", outcome="failure", source=src, details={"reason": err.code})
            raise
        throttle.success("<claim>", src, now)  # the code was right: this caller is not guessing
        username = check_username(body.get("username"))
        password = require_str(body, "password")
        if svc.users.count():
            raise PermissionDenied("device is already claimed", code="claim.already_claimed")
        user = await svc.users.create(username, password, Role.ADMIN)
        claim.mark_claimed(svc.state)
        await svc.audit.record("claim", outcome="success", actor=username, source=src, target=username)
        return web.json_response(_user_json(user.username, user.role), status=201)

    async def login(self, request: web.Request) -> web.Response:
        svc = self._svc
        src = client_address(request)
        body = await json_body(request)
        username = body.get("username")
        password = body.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or len(username) > 64:
            raise ValidationError("username and password are required strings", code="request.field")
        throttle = request.app[THROTTLE_KEY]
        wait = throttle.wait_time(username, src, svc.clock())
        if wait > 0:
            await svc.audit.record("auth.login", outcome="denied", actor=username, source=src,
                                   details={"reason": "throttled", "retry_after_s": round(wait, 1)})
            raise Throttled(wait)
        # Count the attempt as failed BEFORE the slow Argon2 check: otherwise many parallel
        # guesses all pass the wait check while the first ones are still being verified.
        throttle.failure(username, src, svc.clock())
        try:
            user = await svc.users.authenticate(username, password)
        except AuthenticationError:
            await svc.audit.record("auth.login", outcome="failure", actor=username, source=src,
                                   details={"reason": "invalid credentials"})
            raise
        throttle.success(username, src, svc.clock())
        bearer, _ = svc.sessions.create(user.username, SessionKind.BEARER, src)
        cookie, csess = svc.sessions.create(user.username, SessionKind.COOKIE, src)
        await svc.audit.record("auth.login", outcome="success", actor=user.username, source=src)
        resp = web.json_response({
            "token": bearer,
            "token_type": "Bearer",
            "csrf_token": csess.csrf,
            "expires_in": int(svc.config.limits.session_idle_s),
            "user": _user_json(user.username, user.role),
        })
        resp.set_cookie(COOKIE_NAME, cookie, secure=True, httponly=True, samesite="Strict", path="/")
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        sess = current_session(request)
        user = current_user(request)
        if sess is not None:
            self._svc.sessions.revoke(sess.key)
        await self._svc.audit.record("auth.logout", outcome="success", actor=user.username,
                                     source=client_address(request))
        resp = web.json_response({"ok": True})
        resp.del_cookie(COOKIE_NAME, path="/")
        return resp

    async def whoami(self, request: web.Request) -> web.Response:
        user = current_user(request)
        sess = current_session(request)
        return web.json_response({
            "user": _user_json(user.username, user.role),
            "kind": sess.kind.value if sess else None,
            "csrf_token": sess.csrf if sess and sess.kind is SessionKind.COOKIE else None,
        })

    async def change_own_password(self, request: web.Request) -> web.Response:
        svc = self._svc
        user = current_user(request)
        body = await json_body(request)
        current = require_str(body, "current_password")
        new = require_str(body, "new_password")
        src = client_address(request)
        try:
            await svc.users.authenticate(user.username, current)
        except AuthenticationError:
            await svc.audit.record("user.password", outcome="failure", actor=user.username, source=src,
                                   target=user.username, details={"reason": "wrong current password"})
            raise PermissionDenied("current password is wrong", code="auth.wrong_password") from None
        await svc.users.set_password(user.username, new)
        sess = current_session(request)
        revoked = svc.sessions.revoke_user(user.username, keep=sess.key if sess else None)
        await svc.audit.record("user.password", outcome="success", actor=user.username, source=src,
                               target=user.username, details={"other_sessions_revoked": revoked})
        return web.json_response({"ok": True, "other_sessions_revoked": revoked})

    # --- users --------------------------------------------------------------------------------
    async def list_users(self, request: web.Request) -> web.Response:
        return web.json_response({"users": [_user_json(u.username, u.role) for u in self._svc.users.list()]})

    async def get_user(self, request: web.Request) -> web.Response:
        user = self._svc.users.get(request.match_info["username"])
        if user is None:
            raise NotFound("no such user", code="user.not_found")
        return web.json_response(_user_json(user.username, user.role))

    async def create_user(self, request: web.Request) -> web.Response:
        svc = self._svc
        actor = current_user(request)
        body = await json_body(request)
        username = check_username(body.get("username"))
        role = parse_role(body.get("role"))
        password = require_str(body, "password")
        src = client_address(request)
        try:
            user = await svc.users.create(username, password, role)
        except AgentError as err:
            await svc.audit.record("user.create", outcome="failure", actor=actor.username, source=src,
                                   target=username, details={"reason": err.code})
            raise
        await svc.audit.record("user.create", outcome="success", actor=actor.username, source=src,
                               target=username, details={"role": role.value})
        return web.json_response(_user_json(user.username, user.role), status=201)

    async def update_user(self, request: web.Request) -> web.Response:
        svc = self._svc
        actor = current_user(request)
        target = request.match_info["username"]
        body = await json_body(request)
        unknown = set(body) - {"role", "password"}
        if unknown or not body:
            raise ValidationError("allowed fields: role, password", code="request.field",
                                  field=sorted(unknown)[0] if unknown else None)
        src = client_address(request)
        if "password" in body:
            check_password(require_str(body, "password"), username=target)
        try:
            if "role" in body:
                role = parse_role(body["role"])
                await svc.users.set_role(target, role)
                await svc.audit.record("user.update", outcome="success", actor=actor.username, source=src,
                                       target=target, details={"role": role.value})
            if "password" in body:
                await svc.users.set_password(target, body["password"])
                revoked = svc.sessions.revoke_user(target)
                await svc.audit.record("user.password", outcome="success", actor=actor.username, source=src,
                                       target=target, details={"reset_by_admin": True, "sessions_revoked": revoked})
        except AgentError as err:
            await svc.audit.record("user.update", outcome="failure", actor=actor.username, source=src,
                                   target=target, details={"reason": err.code})
            raise
        user = svc.users.get(target)
        assert user is not None
        return web.json_response(_user_json(user.username, user.role))

    async def delete_user(self, request: web.Request) -> web.Response:
        svc = self._svc
        actor = current_user(request)
        target = request.match_info["username"]
        src = client_address(request)
        try:
            await svc.users.delete(target)
        except AgentError as err:
            await svc.audit.record("user.delete", outcome="failure", actor=actor.username, source=src,
                                   target=target, details={"reason": err.code})
            raise
        svc.sessions.revoke_user(target)
        await svc.audit.record("user.delete", outcome="success", actor=actor.username, source=src, target=target)
        return web.json_response({"ok": True})

    # --- settings -----------------------------------------------------------------------------
    async def get_settings(self, request: web.Request) -> web.Response:
        return web.json_response(self._svc.settings.current().to_json())

    async def _apply(self, request: web.Request, patch: dict[str, Any]) -> web.Response:
        svc = self._svc
        actor = current_user(request)
        src = client_address(request)
        try:
            old, new = await svc.settings.apply(patch)
        except AgentError as err:
            await svc.audit.record("settings.change", outcome="failure", actor=actor.username, source=src,
                                   details={"reason": err.code, "field": err.field})
            raise
        before, after = old.to_json(), new.to_json()
        changed = sorted(f"{s}.{k}" for s in after for k in after[s] if before[s][k] != after[s][k])
        await svc.audit.record("settings.change", outcome="success", actor=actor.username, source=src,
                               details={"changed": changed})
        return web.json_response(after)

    def _section_patch(self, section: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            body = await json_body(request)
            return await self._apply(request, {section: body})

        handler.__name__ = f"patch_{section}"
        return handler

    async def patch_settings(self, request: web.Request) -> web.Response:
        return await self._apply(request, await json_body(request))

    # --- status, identity, reset, openapi -----------------------------------------------------
    async def get_status(self, request: web.Request) -> web.Response:
        svc = self._svc
        caps = {c.name: c.status() for c in request.app[CAPABILITIES_KEY]}
        warnings = [w for c in caps.values() for w in c.get("warnings", [])] if caps else []
        return web.json_response({
            "device": {"serial": svc.config.device.serial, "model": svc.config.device.model,
                       "mac": svc.config.device.mac, "firmware_version": svc.config.device.firmware_version},
            "uptime_s": round(time.monotonic() - _STARTED, 1),
            "identity": {"factory_provisioned": svc.identity.is_factory_provisioned()},
            "capabilities": caps,
            "warnings": warnings,
        })

    async def get_ca(self, request: web.Request) -> web.Response:
        return web.Response(body=self._svc.identity.trust_anchor_pem(), content_type="application/x-pem-file")

    async def factory_reset(self, request: web.Request) -> web.Response:
        svc = self._svc
        actor = current_user(request)
        src = client_address(request)
        await svc.audit.record("factory.reset", outcome="success", actor=actor.username, source=src,
                               details={"scope": "users+settings"})
        svc.users.wipe()
        for u in {s.username for s in svc.sessions.active()}:
            svc.sessions.revoke_user(u)
        svc.settings.reset()
        claim.unclaim(svc.state)
        if svc.config.host_mode and claim.load(svc.state).code_hash is None:
            svc.state.claim_file.unlink(missing_ok=True)
            claim.ensure_host_setup_code(svc.state, svc.secret)
        return web.json_response({"ok": True, "claimable": True})

    async def openapi(self, request: web.Request) -> web.Response:
        from agent.api.openapi import build_openapi

        routes: list[Route] = request.app[ROUTES_KEY]
        return web.json_response(build_openapi(routes))
