"""RTSP request handling: authentication, roles, session state, talk lock, RTP-Info.

Transport-free: the asyncio adapter hands in parsed requests and interleaved frames with the time,
and gets back a ``Reply`` (response bytes, what to do after writing them, whether to close, how
long to delay a failure) plus audit events through ``AuditFn``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from agent.capability import Role
from agent.media.errors import MediaError
from agent.media.errors import TalkBusy as MediaTalkBusy
from agent.rtsp.config import RtspConfig
from agent.rtsp.digest import DigestAuthenticator, FailureThrottle, Principal
from agent.rtsp.errors import (
    AuthFailed,
    Forbidden,
    MethodNotValid,
    OptionNotSupported,
    ParseError,
    RtspError,
    SessionNotFound,
    StreamNotFound,
    TalkBusy,
    UnsupportedTransport,
)
from agent.rtsp.fanout import ClientWriter, StreamFeed, Subscriber
from agent.rtsp.feeds import FeedManager
from agent.rtsp.message import Interleaved, Request, Response, parse_header_params
from agent.rtsp.rtp import parse_rtp
from agent.rtsp.sdp import BACKCHANNEL_CODEC, BACKCHANNEL_RATE, build_sdp
from agent.rtsp.session import RtspSession, SessionTable, State, TalkLock

log = logging.getLogger(__name__)

BACKCHANNEL_OPTION = "www.onvif.org/ver20/backchannel"
SUPPORTED_OPTIONS = frozenset({BACKCHANNEL_OPTION})
PUBLIC = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER"
SERVER = "camera-rtsp"
MAX_BAD_FRAMES = 32


class AuditFn(Protocol):
    def __call__(self, event: str, *, outcome: str, actor: str | None = None, source: str | None = None,
                 target: str | None = None, details: Mapping[str, Any] | None = None) -> None: ...


class TalkSink(Protocol):
    """``agent.media.frames.AudioSink``."""

    def open(self, codec: str, clock_rate: int, *, channels: int = 1, config: bytes = b"") -> TalkWriter: ...


class TalkWriter(Protocol):
    def write(self, rtp_payload: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass(eq=False)
class Connection:
    id: int
    source: str  # "ip:port"
    writer: ClientWriter
    secure: bool
    auth_failures: int = 0
    bad_frames: int = 0
    backchannel_streams: set[str] = field(default_factory=set)
    subscribers: dict[str, Subscriber] = field(default_factory=dict)  # session id -> subscriber
    feeds: dict[str, StreamFeed] = field(default_factory=dict)  # session id -> feed
    talk: dict[str, TalkWriter] = field(default_factory=dict)  # session id -> talk channel
    channels: dict[int, str] = field(default_factory=dict)  # backchannel RTP channel -> session id
    last_activity: float = 0.0


@dataclass
class Reply:
    response: Response
    after: Callable[[], None] | None = None
    close: bool = False
    delay: float = 0.0


@dataclass(frozen=True)
class Target:
    stream: str | None
    track: int | None


def parse_target(uri: str) -> Target:
    """``rtsp(s)://host[:port]/stream[/trackID=N]`` or ``/stream...`` or ``*``."""
    if uri == "*":
        return Target(None, None)
    parts = urlsplit(uri)
    if parts.scheme and parts.scheme.lower() not in ("rtsp", "rtsps"):
        raise ParseError("unsupported URI scheme", code="rtsp.bad_uri", close=False)
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        return Target(None, None)
    if len(segments) > 2:
        raise StreamNotFound("no such resource")
    track = None
    if len(segments) == 2:
        key, sep, value = segments[1].partition("=")
        if key != "trackID" or not sep or not value.isdigit() or len(value) > 2:
            raise StreamNotFound("no such track")
        track = int(value)
    return Target(segments[0], track)


class RtspHandler:
    def __init__(self, cfg: RtspConfig, *, auth: DigestAuthenticator, feeds: FeedManager,
                 audit: AuditFn, sink: TalkSink | None, title: str) -> None:
        self.cfg = cfg
        self.auth = auth
        self.feeds = feeds
        self.audit = audit
        self.sink = sink
        self.title = title
        self.sessions = SessionTable(cfg.max_connections * 2)
        self.talk = TalkLock(cfg.talk_silence_s)
        self.throttle = FailureThrottle()
        self.connections: dict[int, Connection] = {}

    # --- entry points ---------------------------------------------------------------------------
    async def handle(self, conn: Connection, req: Request, now: float, wall: float) -> Reply:
        conn.last_activity = now
        cseq = req.cseq
        try:
            if cseq is None:
                raise ParseError("missing or malformed CSeq", code="rtsp.bad_cseq", close=False)
            reply = await self._dispatch(conn, req, now, wall)
        except AuthFailed as exc:
            reply = self._auth_failed(conn, req, exc, now, wall)
        except RtspError as exc:
            reply = Reply(Response(exc.status, reason=_reason(exc)), close=exc.close)
            if exc.status == 551:
                reply.response.add("Unsupported", exc.headers.get("unsupported", ""))
        reply.response.headers.insert(0, ("CSeq", str(cseq if cseq is not None else 0)))
        reply.response.add("Server", SERVER)
        return reply

    def data(self, conn: Connection, frame: Interleaved, now: float) -> bool:
        """An interleaved frame from the client. Returns False when the connection must close."""
        conn.last_activity = now
        sid = conn.channels.get(frame.channel)
        if sid is not None:
            self._talk_audio(conn, sid, frame.payload, now)
            return True
        if frame.channel % 2 == 1 and any(
            s.state is State.PLAYING and (frame.channel - 1) // 2 in s.tracks
            for s in self.sessions.of_connection(conn.id)
        ):
            # RTCP receiver report: proof of life (RFC 2326 12.37); content is not needed
            for s in self.sessions.of_connection(conn.id):
                s.last_activity = now
            return True
        if (frame.channel - 1) in conn.channels:
            return True  # RTCP (sender reports) of the client's backchannel stream
        conn.bad_frames += 1
        return conn.bad_frames <= MAX_BAD_FRAMES

    def closed(self, conn: Connection, reason: str) -> None:
        for s in self.sessions.of_connection(conn.id):
            self._teardown(conn, s, reason)
        self.connections.pop(conn.id, None)

    def tick(self, now: float) -> list[Connection]:
        """Periodic: session timeouts and talk silence. Returns connections to close."""
        doomed: list[Connection] = []
        for s in self.sessions.all():
            if s.expired(now, self.cfg.session_timeout_s):
                conn = self.connections.get(s.connection_id)
                if conn is not None and now - conn.last_activity <= self.cfg.session_timeout_s:
                    s.last_activity = conn.last_activity
                    continue
                if conn is not None:
                    self._teardown(conn, s, "timeout")
                    doomed.append(conn)
                else:
                    self.sessions.remove(s.id)
        sid = self.talk.silent(now)
        if sid is not None:
            talker = self.sessions.find(sid)
            tconn = self.connections.get(talker.connection_id) if talker else None
            self._stop_talk(tconn, sid, talker.username if talker else "", "silence")
        self.feeds.housekeeping()
        return doomed

    # --- dispatch -------------------------------------------------------------------------------
    async def _dispatch(self, conn: Connection, req: Request, now: float, wall: float) -> Reply:
        required = _options(req.header("require"))
        unsupported = required - SUPPORTED_OPTIONS
        if unsupported:
            raise OptionNotSupported("unsupported Require option",
                                     headers={"unsupported": ", ".join(sorted(unsupported))})
        method = req.method
        if method == "OPTIONS":
            return Reply(Response(200).add("Public", PUBLIC))
        if method not in ("DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER"):
            raise RtspError("method not implemented", code="rtsp.method", status=501)
        session_hdr = req.header("session")
        if method in ("GET_PARAMETER", "TEARDOWN", "SET_PARAMETER") and session_hdr is not None:
            # the session is bound to this TLS connection, whose owner authenticated at SETUP; a
            # keep-alive whose nonce went stale must not kill the stream
            session = self.sessions.get(session_hdr, conn.id)
            return self._session_op(conn, req, session, now)
        principal = self.auth.verify(req.header("authorization"), method=method, uri=req.uri,
                                     connection_id=conn.id, now=wall)
        self.throttle.success(_host(conn.source))
        if not principal.role.allows(Role.VIEWER):
            raise self._denied(conn, principal, "viewer role required")
        # after authentication, so unauthenticated clients cannot probe which streams exist
        target = parse_target(req.uri)
        if method == "DESCRIBE":
            return await self._describe(conn, req, target, BACKCHANNEL_OPTION in required, principal)
        if method == "SETUP":
            return await self._setup(conn, req, target, BACKCHANNEL_OPTION in required, principal, now)
        if method in ("GET_PARAMETER", "SET_PARAMETER"):
            return Reply(Response(200))
        session = self.sessions.get(session_hdr, conn.id)
        if session.username != principal.username:
            raise SessionNotFound("session of another user")
        if method == "PLAY":
            return self._play(conn, req, session, now, wall)
        return self._session_op(conn, req, session, now)

    def _session_op(self, conn: Connection, req: Request, session: RtspSession, now: float) -> Reply:
        session.last_activity = now
        if req.method == "TEARDOWN":
            self._teardown(conn, session, "teardown")
            return Reply(Response(200))
        if req.method == "PAUSE":
            if session.pause(now):
                sub = conn.subscribers.pop(session.id, None)
                feed = conn.feeds.get(session.id)
                if sub is not None and feed is not None:
                    feed.detach(sub)
                    session.bytes_sent += sub.bytes_sent
            return Reply(Response(200).add("Session", self._session_value(session)))
        if req.body and req.method == "SET_PARAMETER":
            raise RtspError("parameter not understood", code="rtsp.parameter", status=451)
        return Reply(Response(200).add("Session", self._session_value(session)))

    def _session_value(self, session: RtspSession) -> str:
        return f"{session.id};timeout={self.cfg.session_timeout_s}"

    async def _describe(self, conn: Connection, req: Request, target: Target, backchannel: bool,
                        principal: Principal) -> Reply:
        if target.stream is None or target.track is not None:
            raise StreamNotFound("DESCRIBE needs a stream URI")
        feed = await self.feeds.feed(target.stream)
        if backchannel:
            conn.backchannel_streams.add(target.stream)
        host = urlsplit(req.uri).hostname or "0.0.0.0"  # noqa: S104 - only names the origin in SDP
        body = build_sdp(feed.description, session_id=id(feed) & 0xFFFFFFFF, server_addr=host,
                         title=f"{self.title} {target.stream}", backchannel=backchannel)
        base = req.uri if req.uri.endswith("/") else req.uri + "/"
        resp = Response(200, body=body).add("Content-Base", base).add("Content-Type", "application/sdp")
        return Reply(resp)

    async def _setup(self, conn: Connection, req: Request, target: Target, backchannel: bool,
                     principal: Principal, now: float) -> Reply:
        if target.stream is None or target.track is None:
            raise StreamNotFound("SETUP needs a track URI")
        feed = await self.feeds.feed(target.stream)
        _check_transport(req.header("transport"))
        n_media = len(feed.tracks)
        is_back = target.track == n_media
        offered = backchannel or target.stream in conn.backchannel_streams
        if target.track > n_media or (is_back and not offered):
            raise StreamNotFound("no such track")
        hdr = req.header("session")
        if hdr is not None:
            session = self.sessions.get(hdr, conn.id)
            if session.stream != target.stream or session.username != principal.username:
                raise RtspError("aggregate control across streams", code="rtsp.aggregate", status=459)
        else:
            session = None
        if is_back:
            if not principal.role.allows(Role.OPERATOR):
                self.audit("talk.refused", outcome="denied", actor=principal.username, source=conn.source,
                           target=target.stream, details={"reason": "operator role required"})
                raise Forbidden("operator role required to talk")
            if self.sink is None:
                raise OptionNotSupported("no audio output", headers={"unsupported": BACKCHANNEL_OPTION})
        if session is None:
            session = self.sessions.create(connection_id=conn.id, username=principal.username,
                                           source=conn.source, stream=target.stream, now=now)
        if is_back:
            try:
                self.talk.acquire(session.id, principal.username, now)
            except TalkBusy as exc:
                self.audit("talk.refused", outcome="denied", actor=principal.username, source=conn.source,
                           target=target.stream, details={"reason": "busy"})
                if not session.tracks and session.backchannel is None:
                    self.sessions.remove(session.id)
                raise TalkBusy(str(exc), headers=exc.headers) from None
        channel = 2 * target.track
        session.setup(target.track, backchannel=is_back, now=now)
        transport = f"RTP/AVP/TCP;unicast;interleaved={channel}-{channel + 1}"
        if not is_back:
            transport += f";ssrc={feed.packetizers[target.track].ssrc:08X}"
        else:
            conn.channels[channel] = session.id
        conn.feeds[session.id] = feed
        resp = Response(200).add("Transport", transport).add("Session", self._session_value(session))
        return Reply(resp)

    def _play(self, conn: Connection, req: Request, session: RtspSession, now: float, wall: float) -> Reply:
        feed = conn.feeds.get(session.id)
        if feed is None:
            raise MethodNotValid("PLAY before SETUP", code="rtsp.play_before_setup")
        starting = session.play(now)
        resp = Response(200).add("Session", self._session_value(session)).add("Range", "npt=now-")
        base = req.uri if req.uri.endswith("/") else req.uri + "/"
        infos = []
        for st in feed.starts(session.tracks):
            info = f"url={base}trackID={st.track};seq={st.seq}"
            if st.rtp_ts is not None:
                info += f";rtptime={st.rtp_ts}"
            infos.append(info)
        if infos:
            resp.add("RTP-Info", ",".join(infos))
        if not starting:
            return Reply(resp)
        if session.backchannel is not None and session.id not in conn.talk:
            self._start_talk(conn, session, now)
        if session.started == now:
            self.audit("stream.start", outcome="success", actor=session.username, source=conn.source,
                       target=session.stream, details={"session": session.id,
                                                       "tracks": sorted(session.tracks)})

        def attach() -> None:
            if session.tracks and session.state is State.PLAYING and session.id not in conn.subscribers:
                conn.subscribers[session.id] = feed.attach(
                    conn.writer, frozenset(session.tracks), limit=self.cfg.client_buffer_bytes,
                    drop_after_s=self.cfg.slow_client_drop_s)

        return Reply(resp, after=attach)

    # --- talk -----------------------------------------------------------------------------------
    def _start_talk(self, conn: Connection, session: RtspSession, now: float) -> None:
        assert self.sink is not None
        try:
            channel = self.sink.open(BACKCHANNEL_CODEC, BACKCHANNEL_RATE)
        except MediaTalkBusy:
            self.talk.release(session.id)
            self.audit("talk.refused", outcome="denied", actor=session.username, source=conn.source,
                       target=session.stream, details={"reason": "audio output busy"})
            raise TalkBusy("audio output in use") from None
        except MediaError as exc:
            self.talk.release(session.id)
            raise RtspError("audio output unavailable", code="rtsp.talk_unavailable", status=503) from exc
        conn.talk[session.id] = channel
        self.talk.touch(session.id, now)
        self.audit("talk.start", outcome="success", actor=session.username, source=conn.source,
                   target=session.stream, details={"session": session.id, "codec": BACKCHANNEL_CODEC})

    def _talk_audio(self, conn: Connection, sid: str, payload: bytes, now: float) -> None:
        channel = conn.talk.get(sid)
        if channel is None or not self.talk.touch(sid, now):
            return
        try:
            pkt = parse_rtp(payload)
        except ValueError:
            conn.bad_frames += 1
            return
        if pkt.pt != 0:
            conn.bad_frames += 1
            return
        channel.write(pkt.payload)

    def _stop_talk(self, conn: Connection | None, sid: str, username: str, reason: str) -> None:
        released = self.talk.release(sid)
        channel = conn.talk.pop(sid, None) if conn is not None else None
        if channel is not None:
            try:
                channel.close()
            except Exception:
                log.exception("closing talk channel failed")
        if released or channel is not None:
            self.audit("talk.stop", outcome="info", actor=username,
                       source=conn.source if conn else None, details={"session": sid, "reason": reason})

    # --- teardown ---------------------------------------------------------------------------------
    def _teardown(self, conn: Connection, session: RtspSession, reason: str) -> None:
        self.sessions.remove(session.id)
        sub = conn.subscribers.pop(session.id, None)
        feed = conn.feeds.pop(session.id, None)
        if sub is not None and feed is not None:
            feed.detach(sub)
        for ch, sid in list(conn.channels.items()):
            if sid == session.id:
                del conn.channels[ch]
        if session.backchannel is not None:
            self._stop_talk(conn, session.id, session.username, reason)
        if session.started is not None:
            self.audit("stream.stop", outcome="info", actor=session.username, source=conn.source,
                       target=session.stream,
                       details={"session": session.id, "reason": reason,
                                "bytes": session.bytes_sent + (sub.bytes_sent if sub else 0),
                                "skips": sub.skips if sub else 0})

    def end_session(self, sid: str, reason: str) -> RtspSession | None:
        s = self.sessions.find(sid)
        if s is None:
            return None
        conn = self.connections.get(s.connection_id)
        if conn is None:
            self.sessions.remove(sid)
            return s
        self._teardown(conn, s, reason)
        conn.writer.abort(reason)
        return s

    def session_bytes(self, s: RtspSession) -> int:
        conn = self.connections.get(s.connection_id)
        sub = conn.subscribers.get(s.id) if conn else None
        return s.bytes_sent + (sub.bytes_sent if sub else 0)

    # --- failures -----------------------------------------------------------------------------
    def _auth_failed(self, conn: Connection, req: Request, exc: AuthFailed, now: float, wall: float) -> Reply:
        stale = "stale" in exc.headers
        resp = Response(401)
        for challenge in self.auth.challenges(wall, stale=stale):
            resp.add("WWW-Authenticate", challenge)
        if exc.code == "rtsp.auth_missing":
            # the first request of every client comes without credentials; not an attack
            return Reply(resp)
        if stale:
            # right password, expired nonce: recorded, but not counted as a guess
            self.audit("rtsp.auth", outcome="failure", actor=_claimed_user(req), source=conn.source,
                       target=req.uri[:200], details={"reason": exc.code, "method": req.method})
            return Reply(resp)
        conn.auth_failures += 1
        self.audit("rtsp.auth", outcome="failure", actor=_claimed_user(req), source=conn.source,
                   target=req.uri[:200], details={"reason": exc.code, "method": req.method})
        delay = self.throttle.failure(_host(conn.source), now)
        return Reply(resp, delay=delay, close=conn.auth_failures >= self.cfg.max_auth_failures_per_connection)

    def _denied(self, conn: Connection, principal: Principal, why: str) -> Forbidden:
        self.audit("rtsp.auth", outcome="denied", actor=principal.username, source=conn.source,
                   details={"reason": why})
        return Forbidden(why)


def _reason(exc: RtspError) -> str | None:
    if isinstance(exc, TalkBusy):
        who = exc.headers.get("talker")
        return "Talk channel busy" + (f" (in use by {who})" if who else "")
    return None


def _options(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(v.strip() for v in value.split(",") if v.strip())


def _check_transport(value: str | None) -> None:
    if value is None:
        raise UnsupportedTransport("no Transport header")
    for spec in value.split(",")[:8]:
        params = parse_header_params(spec)
        if not params:
            continue
        proto = params[0][0].upper()
        keys = {k.lower() for k, _ in params[1:]}
        if proto == "RTP/AVP/TCP" or (proto == "RTP/AVP" and "interleaved" in keys):
            return
    raise UnsupportedTransport("only RTP/AVP/TCP interleaved is offered")


def _host(source: str) -> str:
    return source.rsplit(":", 1)[0]


def _claimed_user(req: Request) -> str | None:
    raw = req.header("authorization")
    if raw is None:
        return None
    try:
        from agent.rtsp.digest import parse_authorization

        name = parse_authorization(raw).get("username")
    except AuthFailed:
        return None
    return name[:64] if name else None
