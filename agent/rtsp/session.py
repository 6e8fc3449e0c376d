"""RTSP session state machine (RFC 2326 A.1, server side) and the one-talker lock.

Pure: no I/O, time passed in. A session belongs to the TLS connection that created it; with
RTP interleaved on that connection a session cannot outlive it, so closing the connection tears
its sessions down.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import StrEnum

from agent.rtsp.errors import MethodNotValid, SessionNotFound, TalkBusy


class State(StrEnum):
    INIT = "init"
    READY = "ready"
    PLAYING = "playing"


@dataclass(eq=False)
class RtspSession:
    id: str
    connection_id: int
    username: str
    source: str
    stream: str
    created: float
    last_activity: float
    state: State = State.INIT
    tracks: set[int] = field(default_factory=set)  # media tracks set up
    backchannel: int | None = None  # track index of the backchannel, if set up
    started: float | None = None  # first PLAY
    bytes_sent: int = 0  # of subscriptions already ended (PAUSE)

    def setup(self, track: int, *, backchannel: bool, now: float) -> None:
        if self.state is State.PLAYING:
            # RFC 2326 allows it for transport changes; adding tracks mid-play would need the
            # fan-out to change a running subscription, which no client we target does.
            raise MethodNotValid("SETUP while playing", code="rtsp.setup_while_playing")
        if backchannel:
            self.backchannel = track
        else:
            self.tracks.add(track)
        self.state = State.READY
        self.last_activity = now

    def play(self, now: float) -> bool:
        """Returns True if this PLAY starts delivery (False: already playing)."""
        if self.state is State.INIT:
            raise MethodNotValid("PLAY before SETUP", code="rtsp.play_before_setup")
        self.last_activity = now
        if self.state is State.PLAYING:
            return False
        self.state = State.PLAYING
        if self.started is None:
            self.started = now
        return True

    def pause(self, now: float) -> bool:
        if self.state is State.INIT:
            raise MethodNotValid("PAUSE before SETUP", code="rtsp.pause_before_setup")
        self.last_activity = now
        was_playing = self.state is State.PLAYING
        self.state = State.READY
        return was_playing

    def expired(self, now: float, timeout_s: float) -> bool:
        return now - self.last_activity > timeout_s


class SessionTable:
    def __init__(self, max_sessions: int) -> None:
        self._max = max_sessions
        self._by_id: dict[str, RtspSession] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, *, connection_id: int, username: str, source: str, stream: str,
               now: float) -> RtspSession:
        if len(self._by_id) >= self._max:
            raise TalkBusy("session limit reached", code="rtsp.too_many_sessions", status=503)
        sid = secrets.token_hex(8)
        s = RtspSession(sid, connection_id, username, source, stream, now, now)
        self._by_id[sid] = s
        return s

    def get(self, header: str | None, connection_id: int) -> RtspSession:
        """The session named by a Session header, owned by this connection."""
        if header is None:
            raise SessionNotFound("no Session header", code="rtsp.session_missing")
        sid = header.split(";", 1)[0].strip()
        s = self._by_id.get(sid)
        # a session id from another connection is treated as unknown: ids are not capabilities
        # that can be carried to a new connection
        if s is None or s.connection_id != connection_id:
            raise SessionNotFound("unknown session")
        return s

    def find(self, sid: str) -> RtspSession | None:
        return self._by_id.get(sid)

    def remove(self, sid: str) -> RtspSession | None:
        return self._by_id.pop(sid, None)

    def all(self) -> list[RtspSession]:
        return list(self._by_id.values())

    def of_connection(self, connection_id: int) -> list[RtspSession]:
        return [s for s in self._by_id.values() if s.connection_id == connection_id]


@dataclass
class TalkHolder:
    session_id: str
    username: str
    since: float
    last_audio: float


class TalkLock:
    """One talker at a time, any number of listeners. Released on TEARDOWN, connection loss,
    session timeout, or ``silence_s`` without backchannel audio."""

    def __init__(self, silence_s: float) -> None:
        self._silence = silence_s
        self.holder: TalkHolder | None = None

    def acquire(self, session_id: str, username: str, now: float) -> None:
        h = self.holder
        if h is not None and h.session_id != session_id:
            raise TalkBusy(f"talk channel in use by {h.username}", headers={"talker": h.username})
        if h is None:
            self.holder = TalkHolder(session_id, username, now, now)

    def touch(self, session_id: str, now: float) -> bool:
        h = self.holder
        if h is None or h.session_id != session_id:
            return False
        h.last_audio = now
        return True

    def release(self, session_id: str) -> bool:
        if self.holder is not None and self.holder.session_id == session_id:
            self.holder = None
            return True
        return False

    def silent(self, now: float) -> str | None:
        """Session id whose talk lock lapsed for silence (the caller releases it)."""
        h = self.holder
        if h is not None and now - h.last_audio > self._silence:
            return h.session_id
        return None
