"""HTTP Digest authentication for RTSP (RFC 7616, with the RFC 2069 form RTSP clients still send).

Sans-I/O and clock-free: every check takes ``now``. Nonces are stateless - hex of a timestamp, 8
random bytes and an HMAC over both - so the server keeps no per-challenge state; what it does keep is
a bounded replay cache: with ``qop=auth`` the nonce count must grow per (nonce, cnonce); without qop
a nonce is bound to the connection that first used it, so a nonce (and response) lifted from one
connection is refused on any other.

Challenge order matters (NOTES.md 3): FFmpeg and live555 answer the LAST challenge and speak only
MD5, so SHA-256 goes first and MD5 last; live555 needs ``realm`` before ``nonce``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from agent.capability import Role
from agent.rtsp.errors import AuthFailed

REALM = "camera"
ALGORITHMS = ("SHA-256", "MD5")  # challenge order: SHA-256 first, MD5 last
_NONCE_RE = re.compile(r"[0-9a-f]{64}")
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')
_MAX_PARAM = 512


class UserDirectory(Protocol):
    """What RTSP needs from ``agent.auth.users.UserStore``."""

    def digest_ha1(self, username: str, realm: str, algorithm: str) -> str | None: ...

    def get(self, username: str) -> _HasRole | None: ...


class _HasRole(Protocol):
    @property
    def username(self) -> str: ...

    @property
    def role(self) -> Role: ...


@dataclass(frozen=True, slots=True)
class Principal:
    username: str
    role: Role
    algorithm: str


def _h(algorithm: str, data: str) -> str:
    if algorithm == "MD5":
        return hashlib.md5(data.encode(), usedforsecurity=False).hexdigest()
    return hashlib.sha256(data.encode()).hexdigest()


def parse_authorization(value: str) -> dict[str, str]:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise AuthFailed("not a Digest authorization", code="rtsp.auth_scheme")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if m is None or m.end() == pos:
            raise AuthFailed("malformed Digest parameters", code="rtsp.auth_malformed")
        key, raw = m.group(1).lower(), m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if len(raw) > _MAX_PARAM or key in params or len(params) >= 16:
            raise AuthFailed("oversized or repeated Digest parameter", code="rtsp.auth_malformed")
        params[key] = raw
        pos = m.end()
    return params


def _same_resource(a: str, b: str) -> bool:
    # GStreamer sends rtsp:// URIs on the TLS port, also inside uri=; compare path and query only
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.path.rstrip("/") or "/", pa.query) == (pb.path.rstrip("/") or "/", pb.query)


def digest_response(algorithm: str, ha1: str, nonce: str, method: str, uri: str, *,
                    qop: str | None = None, nc: str = "", cnonce: str = "") -> str:
    """RFC 7616 3.4.1 response (RFC 2069 form when ``qop`` is None)."""
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop == "auth":
        return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{ha2}")


def digest_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    return _h(algorithm, f"{username}:{realm}:{password}")


class DigestAuthenticator:
    def __init__(self, users: UserDirectory, *, nonce_lifetime_s: int, replay_cache_size: int,
                 key: bytes | None = None) -> None:
        self._users = users
        self._lifetime = nonce_lifetime_s
        self._key = key or secrets.token_bytes(32)
        self._replay: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        self._replay_max = replay_cache_size

    # --- nonces -------------------------------------------------------------------------------
    def make_nonce(self, now: float) -> str:
        head = int(now).to_bytes(8, "big") + secrets.token_bytes(8)
        return (head + hmac.new(self._key, head, hashlib.sha256).digest()[:16]).hex()

    def _nonce_age(self, nonce: str, now: float) -> float:
        """Raise for a forged nonce; return its age for a genuine one."""
        if not _NONCE_RE.fullmatch(nonce):
            raise AuthFailed("nonce malformed", code="rtsp.auth_bad_nonce")
        raw = bytes.fromhex(nonce)
        mac = hmac.new(self._key, raw[:16], hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, raw[16:]):
            raise AuthFailed("nonce not issued by this server", code="rtsp.auth_bad_nonce")
        return now - int.from_bytes(raw[:8], "big")

    def challenges(self, now: float, *, stale: bool = False) -> list[str]:
        nonce = self.make_nonce(now)
        extra = ", stale=TRUE" if stale else ""
        return [
            f'Digest realm="{REALM}", nonce="{nonce}", algorithm={alg}, qop="auth"{extra}'
            for alg in ALGORITHMS
        ]

    # --- verification -------------------------------------------------------------------------
    def verify(self, authorization: str | None, *, method: str, uri: str, connection_id: int,
               now: float) -> Principal:
        if authorization is None:
            raise AuthFailed("no credentials", code="rtsp.auth_missing")
        p = parse_authorization(authorization)
        username = p.get("username", "")
        for key in ("username", "realm", "nonce", "uri", "response"):
            if not p.get(key):
                raise AuthFailed(f"Digest parameter {key} missing", code="rtsp.auth_malformed")
        if p["realm"] != REALM:
            raise AuthFailed("wrong realm", code="rtsp.auth_realm")
        algorithm = p.get("algorithm", "MD5").upper()
        if algorithm not in ALGORITHMS:
            raise AuthFailed("unsupported algorithm", code="rtsp.auth_algorithm")
        if not _same_resource(p["uri"], uri):
            raise AuthFailed("digest uri does not match the request", code="rtsp.auth_uri")
        age = self._nonce_age(p["nonce"], now)
        qop = p.get("qop")
        if qop is not None and qop != "auth":
            raise AuthFailed("unsupported qop", code="rtsp.auth_qop")
        ha1 = self._users.digest_ha1(username, REALM, algorithm)
        known = ha1 is not None
        # an unknown user still costs the same hashing, so timing does not reveal accounts
        ha1 = ha1 if ha1 is not None else _h(algorithm, secrets.token_hex(16))
        nc, cnonce = p.get("nc", ""), p.get("cnonce", "")
        if qop == "auth" and (not re.fullmatch(r"[0-9a-fA-F]{8}", nc) or not cnonce):
            raise AuthFailed("qop=auth without nc/cnonce", code="rtsp.auth_malformed")
        expected = digest_response(algorithm, ha1, p["nonce"], method, p["uri"], qop=qop, nc=nc, cnonce=cnonce)
        if not hmac.compare_digest(expected.encode(), p["response"].lower().encode()) or not known:
            raise AuthFailed("wrong credentials", code="rtsp.auth_bad_response")
        if age > self._lifetime or age < -5:
            # correct password, old nonce: the client retries with the fresh one (stale=TRUE)
            raise AuthFailed("nonce expired", code="rtsp.auth_stale", headers={"stale": "1"})
        if qop == "auth":
            self._check_count(p["nonce"], p["cnonce"], int(p["nc"], 16), connection_id)
        else:
            self._check_bound(p["nonce"], connection_id)
        user = self._users.get(username)
        if user is None:
            raise AuthFailed("user vanished", code="rtsp.auth_bad_response")
        return Principal(user.username, user.role, algorithm)

    def _remember(self, key: tuple[str, str], value: tuple[int, int]) -> None:
        self._replay[key] = value
        self._replay.move_to_end(key)
        while len(self._replay) > self._replay_max:
            # evicting a live entry would let its nonce be replayed: refuse that nonce instead by
            # keeping the evicted ones out (their nonces were issued earliest and expire first)
            self._replay.popitem(last=False)

    def _check_count(self, nonce: str, cnonce: str, nc: int, connection_id: int) -> None:
        key = (nonce, cnonce)
        last = self._replay.get(key)
        if last is not None and (nc <= last[0] or last[1] != connection_id):
            raise AuthFailed("nonce count replayed", code="rtsp.auth_replay")
        self._remember(key, (nc, connection_id))

    def _check_bound(self, nonce: str, connection_id: int) -> None:
        key = (nonce, "")
        owner = self._replay.get(key)
        if owner is not None and owner[1] != connection_id:
            raise AuthFailed("nonce replayed from another connection", code="rtsp.auth_replay")
        self._remember(key, (0, connection_id))


class FailureThrottle:
    """Increasing delay per source address after failed logins (ETSI EN 303 645 5.1-5): slows
    guessing without a lockout an attacker could use to lock out the owner."""

    def __init__(self, *, base_s: float = 0.25, max_s: float = 8.0, window_s: float = 300.0,
                 max_entries: int = 4096) -> None:
        self._base, self._max, self._window, self._max_entries = base_s, max_s, window_s, max_entries
        self._fails: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failure(self, source: str, now: float) -> float:
        count, last = self._fails.get(source, (0, now))
        if now - last > self._window:
            count = 0
        count += 1
        self._fails[source] = (count, now)
        self._fails.move_to_end(source)
        while len(self._fails) > self._max_entries:
            self._fails.popitem(last=False)
        if count <= 2:
            return 0.0
        return float(min(self._max, self._base * 2 ** (count - 3)))

    def success(self, source: str) -> None:
        self._fails.pop(source, None)
