"""Where audit records are forwarded: ``settings.syslog`` as a validated target.

Kept apart from agent.audit.forward so that the agent can tell whether forwarding is on (it is
off unless a host is set) without loading the forwarder, which then loads only when it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.audit.errors import ForwardError


@dataclass(frozen=True)
class SyslogTarget:
    host: str
    port: int
    ca_pem: str
    server_name: str | None = None

    @property
    def tls_name(self) -> str:
        return self.server_name or self.host

    @classmethod
    def from_settings(cls, syslog: Any) -> SyslogTarget | None:
        """``settings.syslog`` -> target, or None when forwarding is off (no host)."""
        host = getattr(syslog, "host", None)
        if not host:
            return None
        ca_pem = getattr(syslog, "ca_pem", None)
        if not ca_pem:
            # No anchor means no way to validate the server: refuse instead of trusting anything.
            raise ForwardError(
                "syslog.ca_pem is required to forward over TLS",
                code="audit.forward_no_ca",
                field="syslog.ca_pem",
            )
        port = int(getattr(syslog, "port", 6514))
        if not 1 <= port <= 65535:
            raise ForwardError("syslog.port out of range", code="audit.forward_invalid", field="syslog.port")
        return cls(str(host), port, str(ca_pem), getattr(syslog, "server_name", None) or None)
