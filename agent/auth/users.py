"""Accounts: Argon2id hashes plus sealed Digest secrets, persisted atomically in users.json.

Digest authentication (RTSP, ONVIF) needs H(username:realm:password) on the device; that value
is password-equivalent, so it is stored only sealed with a device-derived key and bound to
(user, realm, algorithm). The last admin can be neither deleted nor demoted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.auth.hashing import AsyncHasher
from agent.auth.policy import check_password, check_username, normalize
from agent.capability import Role
from agent.devicesecret import DeviceSecretProvider
from agent.errors import AuthenticationError, Conflict, NotFound, StateError, ValidationError
from agent.sealing import seal, unseal
from agent.state import StateDir, atomic_write_json, read_json

DIGEST_REALM = "camera"
DIGEST_ALGORITHMS = ("MD5", "SHA-256")
_FORMAT = 1


@dataclass(frozen=True)
class User:
    username: str
    role: Role


def _ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    data = f"{username}:{realm}:{password}".encode()
    if algorithm == "MD5":
        return hashlib.md5(data, usedforsecurity=False).hexdigest()
    return hashlib.sha256(data).hexdigest()


def parse_role(value: object) -> Role:
    try:
        return Role(str(value)) if isinstance(value, str) else Role("")
    except ValueError:
        raise ValidationError("role must be admin, operator or viewer", code="role.invalid", field="role") from None


class UserStore:
    def __init__(
        self,
        state: StateDir,
        secret: DeviceSecretProvider,
        hasher: AsyncHasher,
        clock: Callable[[], float],
        *,
        context_words: tuple[str, ...] = (),
        max_users: int = 64,
    ) -> None:
        self._file = state.users_file
        self._seal_key = secret.derive("digest-secrets")
        self._hasher = hasher
        self._clock = clock
        self._context = context_words
        self._max_users = max_users
        self._lock = asyncio.Lock()
        self._users: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            doc = read_json(self._file)
        except FileNotFoundError:
            return {}
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("users"), dict):
            raise StateError("users.json has an unknown format", code="state.users")
        return dict(doc["users"])

    def _save(self, users: dict[str, dict[str, Any]]) -> None:
        atomic_write_json(self._file, {"format": _FORMAT, "users": users})
        self._users = users

    # --- queries ------------------------------------------------------------------------------
    def get(self, username: str) -> User | None:
        rec = self._users.get(username)
        return User(username, Role(rec["role"])) if rec else None

    def list(self) -> list[User]:
        return [User(n, Role(r["role"])) for n, r in sorted(self._users.items())]

    def count(self) -> int:
        return len(self._users)

    def _admins(self, users: dict[str, dict[str, Any]]) -> int:
        return sum(1 for r in users.values() if r["role"] == Role.ADMIN.value)

    def digest_ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        rec = self._users.get(username)
        if rec is None or realm != DIGEST_REALM or algorithm not in DIGEST_ALGORITHMS:
            return None
        blob = base64.b64decode(rec["digest"][algorithm])
        return unseal(self._seal_key, blob, f"digest:{username}:{realm}:{algorithm}".encode()).decode()

    # --- credential material ------------------------------------------------------------------
    async def _credential_fields(self, username: str, password: str) -> dict[str, Any]:
        pw = check_password(password, username=username, context=self._context)
        digests = {
            alg: base64.b64encode(
                seal(
                    self._seal_key,
                    _ha1(alg, username, DIGEST_REALM, pw).encode(),
                    f"digest:{username}:{DIGEST_REALM}:{alg}".encode(),
                )
            ).decode()
            for alg in DIGEST_ALGORITHMS
        }
        return {"hash": await self._hasher.hash(pw), "digest": digests, "password_changed": self._clock()}

    # --- authentication -----------------------------------------------------------------------
    async def authenticate(self, username: str, password: str) -> User:
        if not isinstance(username, str) or not isinstance(password, str) or len(password) > 1024:
            raise AuthenticationError("invalid credentials", code="auth.invalid_credentials")
        pw = normalize(password)
        rec = self._users.get(username)
        ok = await self._hasher.verify(rec["hash"] if rec else None, pw)
        if not ok or rec is None:
            raise AuthenticationError("invalid credentials", code="auth.invalid_credentials")
        if self._hasher.needs_rehash(rec["hash"]):
            async with self._lock:
                users = dict(self._users)
                if username in users:
                    users[username] = {**users[username], "hash": await self._hasher.hash(pw)}
                    self._save(users)
        return User(username, Role(rec["role"]))

    # --- mutations ----------------------------------------------------------------------------
    async def create(self, username: str, password: str, role: Role) -> User:
        check_username(username)
        fields = await self._credential_fields(username, password)
        async with self._lock:
            if username in self._users:
                raise Conflict("user already exists", code="user.exists", field="username")
            if len(self._users) >= self._max_users:
                raise Conflict("user limit reached", code="user.limit")
            users = dict(self._users)
            users[username] = {"role": role.value, "created": self._clock(), **fields}
            self._save(users)
        return User(username, role)

    async def set_password(self, username: str, password: str) -> None:
        fields = await self._credential_fields(username, password)
        async with self._lock:
            if username not in self._users:
                raise NotFound("no such user", code="user.not_found")
            users = dict(self._users)
            users[username] = {**users[username], **fields}
            self._save(users)

    async def set_role(self, username: str, role: Role) -> User:
        async with self._lock:
            if username not in self._users:
                raise NotFound("no such user", code="user.not_found")
            users = dict(self._users)
            users[username] = {**users[username], "role": role.value}
            if self._admins(users) == 0:
                raise Conflict("the last admin cannot be demoted", code="user.last_admin")
            self._save(users)
        return User(username, role)

    async def delete(self, username: str) -> None:
        async with self._lock:
            if username not in self._users:
                raise NotFound("no such user", code="user.not_found")
            users = dict(self._users)
            del users[username]
            if self._admins(users) == 0:
                raise Conflict("the last admin cannot be deleted", code="user.last_admin")
            self._save(users)

    def wipe(self) -> None:
        """Factory reset: forget every account."""
        self._save({})
