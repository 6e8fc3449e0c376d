"""Digest authentication: RFC 7616 vectors, challenge order for real clients, nonce lifetime,
replay cache, and an attack table."""

from __future__ import annotations

import pytest

from agent.capability import Role
from agent.rtsp.digest import (
    REALM,
    DigestAuthenticator,
    FailureThrottle,
    Principal,
    digest_ha1,
    digest_response,
    parse_authorization,
)
from agent.rtsp.errors import AuthFailed

PASSWORD = "sapphire-otter-compass-22"


class Users:
    """A user directory with the same contract as UserStore.digest_ha1/get (HA1 per algorithm)."""

    def __init__(self) -> None:
        self.roles = {"alice": Role.VIEWER}

    def digest_ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        if username not in self.roles or realm != REALM:
            return None
        return digest_ha1(algorithm, username, realm, PASSWORD)

    def get(self, username: str) -> Principal | None:
        role = self.roles.get(username)
        return Principal(username, role, "") if role else None


def test_rfc7616_vectors() -> None:
    # RFC 7616 section 3.9.1 example (Mufasa / "Circle of Life")
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    for alg, expected in (("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
                          ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")):
        ha1 = digest_ha1(alg, "Mufasa", "http-auth@example.org", "Circle of Life")
        got = digest_response(alg, ha1, nonce, "GET", "/dir/index.html", qop="auth", nc="00000001",
                              cnonce=cnonce)
        assert got == expected


def make(now: float = 1_000_000.0, lifetime: int = 60) -> DigestAuthenticator:
    return DigestAuthenticator(Users(), nonce_lifetime_s=lifetime, replay_cache_size=64)


def header(nonce: str, *, alg: str = "MD5", user: str = "alice", password: str = PASSWORD, uri: str = "rtsp://h/main",
           method: str = "DESCRIBE", qop: bool = False, nc: int = 1, quote_alg: bool = False) -> str:
    ha1 = digest_ha1(alg, user, REALM, password)
    a = f'"{alg}"' if quote_alg else alg
    if qop:
        n = f"{nc:08x}"
        resp = digest_response(alg, ha1, nonce, method, uri, qop="auth", nc=n, cnonce="c1")
        return (f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
                f'response="{resp}", algorithm={a}, qop=auth, nc={n}, cnonce="c1"')
    resp = digest_response(alg, ha1, nonce, method, uri)
    return f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", response="{resp}", algorithm={a}'


def test_challenges_sha256_first_md5_last_realm_before_nonce() -> None:
    ch = make().challenges(1_000_000.0)
    assert "algorithm=SHA-256" in ch[0] and "algorithm=MD5" in ch[-1]
    for c in ch:
        assert c.index("realm=") < c.index("nonce=")


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
@pytest.mark.parametrize("qop", [False, True])
@pytest.mark.parametrize("quote_alg", [False, True])
def test_valid_credentials(alg: str, qop: bool, quote_alg: bool) -> None:
    a = make()
    nonce = a.make_nonce(1_000_000.0)
    p = a.verify(header(nonce, alg=alg, qop=qop, quote_alg=quote_alg), method="DESCRIBE", uri="rtsp://h/main",
                 connection_id=1, now=1_000_010.0)
    assert (p.username, p.role, p.algorithm) == ("alice", Role.VIEWER, alg)


def test_rtsps_request_with_rtsp_digest_uri_accepted() -> None:
    # GStreamer over TLS puts rtsp:// in uri= while the request line may say rtsps://
    a = make()
    nonce = a.make_nonce(1_000_000.0)
    a.verify(header(nonce, uri="rtsp://h:322/main/"), method="DESCRIBE", uri="rtsps://h:322/main",
             connection_id=1, now=1_000_000.0)


def code_of(a: DigestAuthenticator, value: str | None, *, uri: str = "rtsp://h/main", now: float = 1_000_010.0,
            conn: int = 1, method: str = "DESCRIBE") -> str:
    with pytest.raises(AuthFailed) as info:
        a.verify(value, method=method, uri=uri, connection_id=conn, now=now)
    return info.value.code


def test_attack_table() -> None:
    a = make()
    n = a.make_nonce(1_000_000.0)
    forged = n[:-2] + ("00" if n[-2:] != "00" else "11")
    cases = {
        "rtsp.auth_missing": code_of(a, None),
        "rtsp.auth_scheme": code_of(a, "Basic YWxpY2U6eA=="),
        "rtsp.auth_malformed": code_of(a, 'Digest username="alice", , ,=,'),
        "rtsp.auth_bad_response": code_of(a, header(n, password="wrong-password-123")),
        "rtsp.auth_bad_response ": code_of(a, header(n, user="mallory")),
        "rtsp.auth_bad_nonce": code_of(a, header(forged)),
        "rtsp.auth_bad_nonce ": code_of(a, header("abc")),
        "rtsp.auth_uri": code_of(a, header(n, uri="rtsp://h/sub")),
        "rtsp.auth_algorithm": code_of(a, header(n).replace("algorithm=MD5", "algorithm=MD5-sess")),
        "rtsp.auth_realm": code_of(a, header(n).replace(f'realm="{REALM}"', 'realm="other"')),
        "rtsp.auth_bad_response  ": code_of(a, header(n, method="PLAY")),
    }
    for expected, got in cases.items():
        assert got == expected.strip()


def test_expired_nonce_is_stale_only_with_right_password() -> None:
    a = make(lifetime=60)
    n = a.make_nonce(1_000_000.0)
    with pytest.raises(AuthFailed) as info:
        a.verify(header(n), method="DESCRIBE", uri="rtsp://h/main", connection_id=1, now=1_000_061.0)
    assert info.value.code == "rtsp.auth_stale" and "stale" in info.value.headers
    assert code_of(a, header(n, password="not-the-password-9"), now=1_000_061.0) == "rtsp.auth_bad_response"


def test_replays_refused() -> None:
    a = make()
    n = a.make_nonce(1_000_000.0)
    # qop: the nonce count must grow
    a.verify(header(n, qop=True, nc=1), method="DESCRIBE", uri="rtsp://h/main", connection_id=1, now=1_000_001.0)
    a.verify(header(n, qop=True, nc=2), method="DESCRIBE", uri="rtsp://h/main", connection_id=1, now=1_000_001.0)
    assert code_of(a, header(n, qop=True, nc=2)) == "rtsp.auth_replay"
    assert code_of(a, header(n, qop=True, nc=3), conn=2) == "rtsp.auth_replay"
    # no qop: the nonce belongs to the first connection that used it
    m = a.make_nonce(1_000_000.0)
    for _ in range(3):  # RTSP clients reuse it for every request of their connection
        a.verify(header(m), method="DESCRIBE", uri="rtsp://h/main", connection_id=7, now=1_000_002.0)
    assert code_of(a, header(m), conn=8) == "rtsp.auth_replay"


def test_parse_authorization_quoting() -> None:
    p = parse_authorization(r'Digest username="a\"b", realm="camera", nonce=abc, uri="rtsp://x/y,z"')
    assert p == {"username": 'a"b', "realm": "camera", "nonce": "abc", "uri": "rtsp://x/y,z"}


def test_throttle_grows_and_resets() -> None:
    t = FailureThrottle(base_s=0.25, max_s=2.0)
    delays = [t.failure("10.0.0.1", 100.0 + i) for i in range(8)]
    assert delays[:2] == [0.0, 0.0]
    assert delays[2:] == sorted(delays[2:]) and delays[-1] == 2.0
    assert t.failure("10.0.0.2", 100.0) == 0.0
    t.success("10.0.0.1")
    assert t.failure("10.0.0.1", 200.0) == 0.0
