"""Authentication, roles, replay, hostile input and resource bounds against the real TLS server."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from tests.rtsp.client import RtspClient, pull
from tests.rtsp.harness import PASSWORDS, ServerThread


def client(server: ServerThread, tls: ssl.SSLContext, user: str | None = "viewer", **kw: object) -> RtspClient:
    c = RtspClient("127.0.0.1", server.port, user, PASSWORDS.get(user or "", None), ctx=tls, **kw)  # type: ignore[arg-type]
    return c.connect()


def audit(server: ServerThread, event: str) -> list[dict[str, object]]:
    time.sleep(0.3)  # records are written off the loop, in order, by the audit writer thread
    return [e for e in server.audit_events() if e.get("event") == event]


def wait_closed(c: RtspClient, seconds: float) -> bool:
    assert c.sock is not None
    c.sock.settimeout(seconds)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if not c.sock.recv(65536):
                return True
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return False


@pytest.mark.parametrize(("alg", "qop"), [("MD5", False), ("MD5", True), ("SHA-256", True), ("SHA-256", False)])
def test_algorithms_and_forms_play(server: ServerThread, tls: ssl.SSLContext, alg: str, qop: bool) -> None:
    c = client(server, tls, algorithm=alg, use_qop=qop)
    try:
        r = c.play("sub")
        assert r.status == 200, r
        assert r.header("RTP-Info") and "seq=" in (r.header("RTP-Info") or "")
        stats = pull(c, 1.5)
        video = stats[0]
        assert video.packets > 10 and video.gaps == 0 and video.reorders == 0
        # RTP-Info names the first packet this client gets
        info = r.header("RTP-Info") or ""
        assert f"seq={video.first_seq}" in info.split(",")[0]
    finally:
        c.close()


def test_wrong_password_refused_and_audited(server: ServerThread, tls: ssl.SSLContext) -> None:
    c = RtspClient("127.0.0.1", server.port, "viewer", "not-the-password-1", ctx=tls).connect()
    try:
        r = c.play("main")
        assert r.status == 401
        chal = [v for k, v in r.headers if k == "WWW-Authenticate"]
        assert "SHA-256" in chal[0] and "MD5" in chal[-1]
    finally:
        c.close()
    fails = [e for e in audit(server, "rtsp.auth") if e.get("outcome") == "failure"]
    assert any(e.get("actor") == "viewer" and "bad_response" in str(e.get("details")) for e in fails)
    assert "not-the-password" not in str(server.audit_events())


def test_unknown_user_and_too_many_failures_close(server: ServerThread, tls: ssl.SSLContext) -> None:
    c = RtspClient("127.0.0.1", server.port, "mallory", "whatever-password-1", ctx=tls).connect()
    base = f"rtsps://127.0.0.1:{server.port}/main"
    statuses = []
    try:
        c.request("DESCRIBE", base)  # gets the challenge
        for _ in range(6):
            try:
                statuses.append(c.request("DESCRIBE", base).status)
            except ConnectionError:
                break
    finally:
        c.close()
    assert set(statuses) == {401} and len(statuses) <= 5  # closed after max failures


def test_viewer_cannot_talk(server: ServerThread, tls: ssl.SSLContext) -> None:
    c = client(server, tls, "viewer")
    try:
        hdr = {"Require": "www.onvif.org/ver20/backchannel"}
        r = c.play("main", tracks=3, extra=hdr)
        assert r.status == 403
    finally:
        c.close()
    assert any(e.get("actor") == "viewer" and e.get("outcome") == "denied" for e in audit(server, "talk.refused"))


def test_backchannel_without_require_not_offered(server: ServerThread, tls: ssl.SSLContext) -> None:
    c = client(server, tls, "oper")
    try:
        d = c.request("DESCRIBE", f"rtsps://127.0.0.1:{server.port}/main")
        assert b"sendonly" not in d.body
        r = c.request("SETUP", f"rtsps://127.0.0.1:{server.port}/main/trackID=2",
                      {"Transport": "RTP/AVP/TCP;unicast;interleaved=4-5"})
        assert r.status == 404
        r = c.request("OPTIONS", "*", {"Require": "com.example.unknown"})
        assert r.status == 551 and r.header("Unsupported") == "com.example.unknown"
    finally:
        c.close()


def test_expired_nonce_refused_stale_and_audited(server: ServerThread, tls: ssl.SSLContext) -> None:
    c = client(server, tls, "viewer", use_qop=False)
    base = f"rtsps://127.0.0.1:{server.port}/main"
    try:
        assert c.request("DESCRIBE", base).status == 200
        time.sleep(7)  # nonce_lifetime_s = 6 in the test config
        c.cseq += 1
        c.send_raw(f"DESCRIBE {base} RTSP/1.0\r\nCSeq: {c.cseq}\r\nAuthorization: "
                   f"{c.authorization('DESCRIBE', base)}\r\n\r\n".encode())
        r = c.read_reply()
        assert r.status == 401 and any("stale=TRUE" in v for k, v in r.headers if k == "WWW-Authenticate")
        assert c.request("DESCRIBE", base).status == 200  # the client retries with the fresh nonce
    finally:
        c.close()
    assert any("auth_stale" in str(e.get("details")) for e in audit(server, "rtsp.auth"))


def test_replayed_nonce_refused_and_audited(server: ServerThread, tls: ssl.SSLContext) -> None:
    base = f"rtsps://127.0.0.1:{server.port}/main"
    a = client(server, tls, "viewer", use_qop=False)
    b = client(server, tls, None)
    try:
        assert a.request("DESCRIBE", base).status == 200
        stolen = a.authorization("DESCRIBE", base)
        b.send_raw(f"DESCRIBE {base} RTSP/1.0\r\nCSeq: 1\r\nAuthorization: {stolen}\r\n\r\n".encode())
        assert b.read_reply().status == 401
        # and with qop: an old nonce count on the same connection
        q = client(server, tls, "viewer", use_qop=True)
        assert q.request("DESCRIBE", base).status == 200
        q.nc -= 1
        q.cseq += 1
        q.send_raw(f"DESCRIBE {base} RTSP/1.0\r\nCSeq: {q.cseq}\r\nAuthorization: "
                   f"{q.authorization('DESCRIBE', base)}\r\n\r\n".encode())
        assert q.read_reply().status == 401
        q.close()
    finally:
        a.close()
        b.close()
    assert sum("auth_replay" in str(e.get("details")) for e in audit(server, "rtsp.auth")) >= 2


BAD = [
    ("oversized header", b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX: " + b"a" * 10000 + b"\r\n\r\n", 431, True),
    ("oversized body", b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 100000\r\n\r\n", 413, True),
    ("malformed", b"HELLO\r\n\r\n", 400, True),
    ("wrong version", b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n", 505, True),
    ("missing cseq", b"OPTIONS * RTSP/1.0\r\n\r\n", 400, False),
    ("bad cseq", b"OPTIONS * RTSP/1.0\r\nCSeq: x1\r\n\r\n", 400, False),
    ("unknown session", b"GET_PARAMETER rtsp://h/main RTSP/1.0\r\nCSeq: 2\r\nSession: deadbeef\r\n\r\n", 454, False),
    ("unknown method", b"RECORD rtsp://h/main RTSP/1.0\r\nCSeq: 2\r\n\r\n", 501, False),
]


@pytest.mark.parametrize(("name", "data", "status", "closes"), BAD, ids=[b[0] for b in BAD])
def test_bad_input(server: ServerThread, tls: ssl.SSLContext, name: str, data: bytes, status: int,
                   closes: bool) -> None:
    c = client(server, tls, None)
    try:
        c.send_raw(data)
        r = c.read_reply()
        assert r.status == status
        if closes:
            assert wait_closed(c, 3)
        else:
            assert c.request("OPTIONS", "*").status == 200  # still usable
    finally:
        c.close()


def test_bad_interleaved_channel_ignored_then_closed(server: ServerThread, tls: ssl.SSLContext) -> None:
    c = client(server, tls, None)
    try:
        c.send_raw(b"$\x09\x00\x04abcd")
        assert c.request("OPTIONS", "*").status == 200
        c.send_raw(b"$\x09\x00\x04abcd" * 40)
        assert wait_closed(c, 3)
    finally:
        c.close()


def test_non_tls_bytes_on_tls_port(server: ServerThread, tls: ssl.SSLContext) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionError, TimeoutError):
            pass
        assert b"RTSP/1.0" not in data
    c = client(server, tls, None)
    assert c.request("OPTIONS", "*").status == 200
    c.close()


def test_slowloris_closed_while_others_served(server: ServerThread, tls: ssl.SSLContext) -> None:
    slow = client(server, tls, None)
    slow.send_raw(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n")
    t0 = time.monotonic()
    other = client(server, tls, None)
    assert other.request("OPTIONS", "*").status == 200
    other.close()
    for _ in range(3):
        try:
            slow.send_raw(b"X-Drip: 1\r\n")
        except OSError:
            break
        time.sleep(0.5)
    assert wait_closed(slow, 5)
    assert time.monotonic() - t0 < 6  # request_deadline_s = 2 plus the 1 s sweep
    slow.close()


def test_slow_reader_dropped_without_stalling_others(server: ServerThread, tls: ssl.SSLContext) -> None:
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.port))
    slow = RtspClient("127.0.0.1", server.port, "viewer", PASSWORDS["viewer"], ctx=tls)
    slow.sock = tls.wrap_socket(raw, server_hostname="127.0.0.1")
    assert slow.play("main").status == 200
    fast = client(server, tls, "viewer")
    try:
        assert fast.play("main").status == 200
        stats = pull(fast, 8)  # the slow one never reads during this time
        assert stats[0].gaps == 0 and stats[0].packets > 100
        stops = [e for e in audit(server, "stream.stop") if e["details"]["session"] == slow.session]  # type: ignore[index]
        assert [e["details"]["reason"] for e in stops] == ["slow client"]  # type: ignore[index]
    finally:
        fast.close()
        slow.close()


def test_sessions_listed_and_ended_by_admin(server: ServerThread, tls: ssl.SSLContext) -> None:
    c = client(server, tls, "viewer")
    try:
        assert c.play("sub").status == 200
        pull(c, 0.5)
        assert server.cap is not None
        rows = server.run(server.cap.sessions)
        mine = [r for r in rows if r["id"] == c.session]
        assert mine and mine[0]["user"] == "viewer" and mine[0]["stream"] == "sub" and mine[0]["bytes"] > 0
        assert server.run(server.cap.handler.end_session, c.session, "ended by admin") is not None  # type: ignore[union-attr]
        assert wait_closed(c, 3)
        assert all(r["id"] != c.session for r in server.run(server.cap.sessions))
    finally:
        c.close()


def test_plain_port_only_when_enabled_audited_and_warned(server: ServerThread, tls: ssl.SSLContext) -> None:
    from tests.rtsp.harness import free_port

    assert server.cap is not None and server.svc is not None
    assert server.cap.status()["plain_port"] is None
    port = free_port()
    svc = server.svc
    server.call(svc.settings.apply({"network": {"rtsp_plain_port": port}}))
    time.sleep(0.3)
    st = server.cap.status()
    assert st["plain_port"] == port and any("plaintext" in w for w in st["warnings"])
    c = RtspClient("127.0.0.1", port, "viewer", PASSWORDS["viewer"], ctx=None).connect()
    assert c.play("sub", scheme="rtsp").status == 200
    c.close()
    server.call(svc.settings.apply({"network": {"rtsp_plain_port": None}}))
    time.sleep(0.3)
    assert server.cap.status()["plain_port"] is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    changes = audit(server, "rtsp.plain_port")
    assert [e["details"]["enabled"] for e in changes][-2:] == [True, False]  # type: ignore[index]


def test_keepalive_and_session_timeout(server: ServerThread, tls: ssl.SSLContext) -> None:
    c = client(server, tls, "viewer")
    try:
        assert c.play("sub").status == 200
        pull(c, 0.3)
        base = f"rtsps://127.0.0.1:{server.port}/sub/"
        r = c.request("GET_PARAMETER", base)
        assert r.status == 200 and (r.header("Session") or "").startswith(f"{c.session};timeout=")
        assert server.cap is not None and server.cap.server is not None
        # the housekeeping sweep as it would run 2 minutes later with no request or RTCP meanwhile
        server.run(server.cap.server.sweep, time.monotonic() + 120)
        assert wait_closed(c, 3)
    finally:
        c.close()
    stops = [e for e in audit(server, "stream.stop") if e["details"]["session"] == c.session]  # type: ignore[index]
    assert [e["details"]["reason"] for e in stops] == ["timeout"]  # type: ignore[index]


def test_backchannel_rtp_and_rtcp_from_client(server: ServerThread, tls: ssl.SSLContext) -> None:
    """Backchannel RTP reaches the sink; the client's RTCP on the odd channel is accepted (a long
    talk sends many sender reports) while RTP with a foreign payload type is ignored."""
    import struct

    talk_dir = server.root / "talk"
    before = set(talk_dir.glob("*.wav")) if talk_dir.exists() else set()
    c = client(server, tls, "oper")
    try:
        hdr = {"Require": "www.onvif.org/ver20/backchannel"}
        assert c.play("sub", tracks=3, extra=hdr).status == 200
        for i in range(60):
            rtp = struct.pack("!BBHII", 0x80, 0, i, i * 160, 0xABCDEF) + b"\x7f" * 160
            c.send_raw(b"$\x04" + struct.pack("!H", len(rtp)) + rtp)
            sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0xABCDEF, 0, 0, 0, i, i * 160)
            c.send_raw(b"$\x05" + struct.pack("!H", len(sr)) + sr)
        c.send_raw(b"$\x04\x00\x0c" + struct.pack("!BBHII", 0x80, 96, 99, 0, 1))  # wrong PT: dropped
        assert c.request("GET_PARAMETER", f"rtsps://127.0.0.1:{server.port}/sub/").status == 200
        assert c.request("TEARDOWN", f"rtsps://127.0.0.1:{server.port}/sub/").status == 200
    finally:
        c.close()
    time.sleep(1.0)
    [wav] = set(talk_dir.glob("*.wav")) - before
    import wave

    with wave.open(str(wav)) as wf:
        assert wf.getnframes() >= 50 * 160
