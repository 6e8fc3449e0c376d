"""One error hierarchy for the agent. Every error carries a stable machine-readable code."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose.

    ``code`` is stable API (clients and tests match on it); ``message`` is for humans and may
    change. ``status`` is the HTTP status the management API answers with. ``field`` names the
    offending input field for validation errors.
    """

    code: str = "agent.error"
    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.field = field

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class ValidationError(AgentError):
    code = "request.invalid"
    status = 400


class AuthenticationError(AgentError):
    code = "auth.required"
    status = 401


class PermissionDenied(AgentError):
    code = "auth.forbidden"
    status = 403


class NotFound(AgentError):
    code = "not_found"
    status = 404


class Conflict(AgentError):
    code = "conflict"
    status = 409


class StateError(AgentError):
    """Persistent state is missing, unreadable or fails its integrity check."""

    code = "state.corrupt"
    status = 500
