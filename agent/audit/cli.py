"""`camera-agent audit verify|export`: offline verification and export of a state directory's log.

Exit codes of ``audit verify`` (stable, scripts rely on them):
  0  the whole chain verifies, nothing torn, no tampering ever recorded
  1  tampering: the chain fails, or the device recorded ``audit.tamper_detected`` / quarantined a log
  3  incomplete tail: everything verifies except a torn last line (a crash mid-write; the agent
     repairs it at its next start and records ``audit.recovered``)
  4  cannot verify: no device secret, unreadable files
(2 is argparse's usage error.) ``audit export`` exits 0, or 1 when it met tampering (records
printed before that point are authentic; the head check runs at the end).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from agent.audit.errors import AuditError, AuditTampered
from agent.audit.limits import AuditLimits
from agent.audit.verify import iter_directory, quarantined, verify_directory
from agent.devicesecret import FileDeviceSecret
from agent.errors import AgentError
from agent.state import StateDir

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_INCOMPLETE = 3
EXIT_UNVERIFIABLE = 4


def _key(state: StateDir) -> bytes:
    # FileDeviceSecret creates a missing secret; verifying with a fresh one would call every
    # record forged, so refuse instead.
    if not state.device_secret_file.is_file():
        raise AuditError(f"no device secret at {state.device_secret_file}", code="audit.no_key")
    return FileDeviceSecret(state.device_secret_file).derive("audit-mac")


def cmd_verify(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    try:
        key = _key(state)
        report = verify_directory(state.audit_dir, key, limits=AuditLimits())
    except AuditTampered as exc:
        print(
            json.dumps(
                {"ok": False, "error": exc.to_json(), "quarantined": quarantined(state.audit_dir)}, indent=2
            )
        )
        return EXIT_TAMPERED
    except AgentError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_UNVERIFIABLE
    body = report.to_json()
    q = quarantined(state.audit_dir)
    body["quarantined"] = q
    if q:
        body["ok"] = False
    print(json.dumps(body, indent=2))
    if report.tamper_events or q:
        return EXIT_TAMPERED
    if report.incomplete_tail is not None:
        return EXIT_INCOMPLETE
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from agent.audit.rfc5424 import render  # registering the command (every agent start) needs none of it

    state = StateDir(Path(args.state_dir))
    out = sys.stdout.buffer
    hostname = socket.gethostname()
    try:
        key = _key(state)
        for rec in iter_directory(state.audit_dir, key):
            if rec.seq >= args.since:
                out.write(render(rec, args.format, hostname))
        out.flush()
    except AuditTampered as exc:
        out.flush()
        print(f"error: {exc.code}: seq {exc.seq}: {exc.reason}", file=sys.stderr)
        return EXIT_TAMPERED
    except AgentError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_UNVERIFIABLE
    return EXIT_OK


def _since(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError("since must be a non-negative integer")
    return int(value)


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = subparsers.add_parser("audit", help="verify or export the tamper-evident audit log")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser("verify", help="verify the whole chain (exit 0 only if it verifies)")
    verify.add_argument("--state-dir", required=True, type=Path)
    verify.set_defaults(func=cmd_verify)
    export = sub.add_parser("export", help="print verified records")
    export.add_argument("--state-dir", required=True, type=Path)
    export.add_argument("--since", type=_since, default=0, help="first seq to print")
    export.add_argument("--format", choices=("jsonl", "rfc5424"), default="jsonl")
    export.set_defaults(func=cmd_export)
