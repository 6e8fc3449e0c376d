"""Errors of the device-side factory flow. Codes are stable API (the station and tests match them).

The station sees only ``code`` and a short message; the precise reason goes to the audit log.
"""

from __future__ import annotations

from agent.errors import AgentError


class FactoryError(AgentError):
    code = "factory.error"
    status = 400


class FactoryRefused(FactoryError):
    """A request that is well-formed but not allowed now (wrong step, wrong serial, replay)."""

    code = "factory.refused"
    status = 409


class FactoryForbidden(FactoryError):
    """The peer is not a factory station."""

    code = "factory.forbidden"
    status = 403


class FactoryInvalid(FactoryError):
    """A malformed or oversized request, or a certificate that does not verify."""

    code = "factory.invalid"
    status = 400
