"""Size limits of the audit log. They live here (and in the agent config's ``audit`` section),
not scattered through the parsers that enforce them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from agent.audit.errors import AuditError

MIB = 1024 * 1024


@dataclass(frozen=True)
class AuditLimits:
    # One record line; the writer never produces more (details are cut down first), so a longer
    # line is tampering or garbage and the parser stops reading there.
    max_line_bytes: int = 32 * 1024
    # Encoded ``details`` above this are replaced by a marker so the event itself is never lost.
    max_details_bytes: int = 8 * 1024
    # What a verifier reads of one segment file; generous against the writer's default of 1 MiB,
    # a bound against a planted multi-gigabyte file, not a policy.
    max_segment_read_bytes: int = 64 * MIB
    max_segments_read: int = 1024
    max_head_bytes: int = 4096
    # checkpoint.json: about 1 KiB per closed segment; above this the writer keeps none (every
    # open then verifies the whole log) rather than let a reader parse an unbounded file.
    max_checkpoint_bytes: int = 256 * 1024
    # Forwarder queue (records held in memory while the syslog server is unreachable).
    forward_queue: int = 4096

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> AuditLimits:
        known = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for name, value in section.items():
            if name not in known:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise AuditError(f"audit limit {name} must be a positive integer", code="audit.config")
            values[name] = value
        return cls(**values)
