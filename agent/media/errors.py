"""Errors of the media capability. Codes are stable API (status, tests, audit)."""

from __future__ import annotations

from agent.errors import AgentError


class MediaError(AgentError):
    code = "media.error"
    status = 500


class SourceError(MediaError):
    """A source could not be opened or stopped producing; the pipeline restarts it with backoff."""

    code = "media.source_failed"


class BitstreamError(MediaError):
    """An encoded bitstream (Annex B, AAC config, RTP payload) is malformed or exceeds a limit."""

    code = "media.bitstream_invalid"


class TalkBusy(MediaError):
    """A second talker while one TalkChannel is open: one talker at a time."""

    code = "media.talk_busy"
    status = 409


class HubClosed(MediaError):
    code = "media.hub_closed"
