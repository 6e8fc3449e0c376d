"""Errors of the RTSP capability. Each carries a stable code and the RTSP status to answer with.

The status and reason sent to the client are deliberately coarse; the precise reason goes to the
audit log (``detail``) so an attacker learns nothing from the difference between failures.
"""

from __future__ import annotations

from agent.errors import AgentError


class RtspError(AgentError):
    code = "rtsp.error"
    status = 400
    # close the connection after answering: set for framing errors, where the byte stream can no
    # longer be trusted to be in sync.
    close: bool = False

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 close: bool | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code, status=status)
        if close is not None:
            self.close = close
        self.headers = headers or {}


class ParseError(RtspError):
    """The byte stream is not a well-formed, bounded RTSP message."""

    code = "rtsp.malformed"
    status = 400
    close = True


class TooLarge(ParseError):
    code = "rtsp.too_large"
    status = 413


class HeaderTooLarge(ParseError):
    code = "rtsp.header_too_large"
    status = 431  # RFC 6585 wording; RTSP clients treat any 4xx as fatal, which is what we want


class AuthFailed(RtspError):
    code = "rtsp.auth_failed"
    status = 401


class Forbidden(RtspError):
    code = "rtsp.forbidden"
    status = 403


class SessionNotFound(RtspError):
    code = "rtsp.session_not_found"
    status = 454


class MethodNotValid(RtspError):
    code = "rtsp.method_not_valid_in_state"
    status = 455


class UnsupportedTransport(RtspError):
    code = "rtsp.unsupported_transport"
    status = 461


class OptionNotSupported(RtspError):
    code = "rtsp.option_not_supported"
    status = 551


class StreamNotFound(RtspError):
    code = "rtsp.stream_not_found"
    status = 404


class TalkBusy(RtspError):
    """A second talker. 453 is what GStreamer prints verbatim ("Not Enough Bandwidth") with the
    reason phrase we choose, so the phrase carries the human-readable explanation."""

    code = "rtsp.talk_busy"
    status = 453


class MediaUnavailable(RtspError):
    code = "rtsp.media_unavailable"
    status = 503
