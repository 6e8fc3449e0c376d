"""OTA errors. The caller of an install sees only ``OtaRefused`` ("update refused"); the precise
reason (a ``bundle.*`` or ``ota.*`` code) goes to the audit log and is kept in ``reason``."""

from __future__ import annotations

from agent.errors import AgentError


class OtaError(AgentError):
    code = "ota.error"
    status = 500


class OtaRefused(OtaError):
    """The bundle was refused. Message and code are deliberately the same for every reason."""

    code = "ota.refused"
    status = 400

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__("update refused", code="ota.refused")
        self.reason = reason
        self.detail = detail


class OtaBusy(OtaError):
    code = "ota.busy"
    status = 409


class OtaStateError(OtaError):
    """Slot, boot-selection or rollback-index state is missing or inconsistent."""

    code = "ota.state"
    status = 500


class MarkGoodRefused(OtaError):
    code = "ota.mark_good_refused"
    status = 409
