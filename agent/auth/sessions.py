"""Opaque server-side sessions (256-bit ids), browser cookies and bearer tokens.

Only SHA-256 digests of session ids are kept, so a memory or log disclosure of the table does not
yield usable tokens. Expiry is pure arithmetic on the ``now`` passed in: idle and absolute
timeouts. Roles are read from the user store on every request, not cached in the session, so a
demotion takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from agent.errors import AuthenticationError, PermissionDenied

TOKEN_BYTES = 32


class SessionKind(StrEnum):
    COOKIE = "cookie"
    BEARER = "bearer"


@dataclass(frozen=True)
class Session:
    key: str  # sha256(token) hex
    username: str
    kind: SessionKind
    created: float
    last_seen: float
    csrf: str
    source: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        idle_s: float,
        absolute_s: float,
        max_per_user: int,
    ) -> None:
        self._clock = clock
        self._idle = idle_s
        self._absolute = absolute_s
        self._max_per_user = max_per_user
        self._by_key: dict[str, Session] = {}

    def create(self, username: str, kind: SessionKind, source: str) -> tuple[str, Session]:
        """A fresh id on every login (no fixation); returns the token once, keeps its digest."""
        now = self._clock()
        self._expire(now)
        mine = sorted((s for s in self._by_key.values() if s.username == username), key=lambda s: s.last_seen)
        for old in mine[: max(0, len(mine) - self._max_per_user + 1)]:
            del self._by_key[old.key]
        token = secrets.token_urlsafe(TOKEN_BYTES)
        sess = Session(_digest(token), username, kind, now, now, secrets.token_urlsafe(24), source)
        self._by_key[sess.key] = sess
        return token, sess

    def _expire(self, now: float) -> None:
        dead = [k for k, s in self._by_key.items() if self._is_expired(s, now)]
        for k in dead:
            del self._by_key[k]

    def _is_expired(self, s: Session, now: float) -> bool:
        return now - s.last_seen > self._idle or now - s.created > self._absolute

    def resolve(self, token: str, kind: SessionKind) -> Session:
        """Look up and touch a session; raises ``AuthenticationError`` if unknown or expired."""
        now = self._clock()
        sess = self._by_key.get(_digest(token))
        if sess is None or sess.kind != kind:
            raise AuthenticationError("session unknown or expired", code="auth.session_invalid")
        if self._is_expired(sess, now):
            del self._by_key[sess.key]
            raise AuthenticationError("session unknown or expired", code="auth.session_expired")
        touched = replace(sess, last_seen=now)
        self._by_key[sess.key] = touched
        return touched

    @staticmethod
    def check_csrf(sess: Session, presented: str | None) -> None:
        if presented is None or not hmac.compare_digest(sess.csrf.encode(), presented.encode()):
            raise PermissionDenied("missing or wrong CSRF token", code="auth.csrf")

    def revoke(self, key: str) -> None:
        self._by_key.pop(key, None)

    def revoke_user(self, username: str, *, keep: str | None = None) -> int:
        victims = [k for k, s in self._by_key.items() if s.username == username and k != keep]
        for k in victims:
            del self._by_key[k]
        return len(victims)

    def active(self) -> list[Session]:
        self._expire(self._clock())
        return list(self._by_key.values())
