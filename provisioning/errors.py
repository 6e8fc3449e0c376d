"""Errors of the factory station. Every error carries a stable code (the CLI prints it, tests match it)."""

from __future__ import annotations

from agent.errors import AgentError


class ProvisionError(AgentError):
    code = "provision.error"
    status = 500


class JobRefused(ProvisionError):
    """The job contradicts the database or the device (duplicate serial/MAC, wrong model...)."""

    code = "provision.refused"
    status = 409


class DeviceRefused(ProvisionError):
    """The device answered a step with an error."""

    code = "provision.device_refused"
    status = 502


class DeviceInvalid(ProvisionError):
    """The device sent something that fails our checks (bad CSR, failed proof of possession)."""

    code = "provision.device_invalid"
    status = 502


class DeviceUnreachable(ProvisionError):
    code = "provision.unreachable"
    status = 503


class PkiError(ProvisionError):
    code = "provision.pki"


class DatabaseError(ProvisionError):
    code = "provision.db"
