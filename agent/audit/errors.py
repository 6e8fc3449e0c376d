"""Errors of the audit package. Codes are stable API (tests and the CLI match on them)."""

from __future__ import annotations

from agent.errors import AgentError, StateError, ValidationError


class AuditError(StateError):
    """The audit log cannot be written or read."""

    code = "audit.error"


class AuditTampered(AuditError):
    """The log fails verification. ``seq`` is the first record that does not verify (None when the
    failure is about the log as a whole, e.g. a missing head pointer)."""

    code = "audit.tampered"

    def __init__(self, code: str, seq: int | None, reason: str) -> None:
        super().__init__(reason, code=code)
        self.seq = seq
        self.reason = reason

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "seq": self.seq, "reason": self.reason}


class AuditRecordInvalid(ValidationError):
    """A caller passed an event the log refuses (bad event name or outcome): a programming error."""

    code = "audit.record_invalid"


class ForwardError(AgentError):
    """The syslog forwarder cannot be configured as asked."""

    code = "audit.forward_invalid"
    status = 400
