"""`camera-agent factory-reset`: wipe identity and data and return the device to factory state.

Offline (the agent must not be running on the state directory). The reset is recorded in the
audit log, which survives it. On the board this is what the recessed reset button runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from agent.audit.log import AuditLog
from agent.devicesecret import FileDeviceSecret
from agent.errors import ValidationError
from agent.state import StateDir


def _cmd_reset(args: argparse.Namespace) -> int:
    # Here, not at the top: registering the command (every agent start) must not load the factory
    # protocol and device code that the reset module brings.
    from agent.factory.reset import factory_reset

    if not args.yes:
        raise ValidationError(
            "factory reset erases the identity, accounts and settings: add --yes", code="factory.reset_unconfirmed"
        )
    state = StateDir.open(Path(args.state_dir))
    secret = FileDeviceSecret(state.device_secret_file)
    audit = AuditLog(state.audit_dir, secret.derive("audit-mac"), clock=time.time)
    try:
        wiped = factory_reset(state, audit, actor=os.environ.get("USER"), source="console")
    finally:
        audit.close()
    print(json.dumps({"reset": True, "wiped": wiped}))
    return 0


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("factory-reset", help="wipe identity and data; back to factory state (audited)")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--yes", action="store_true", help="confirm the wipe")
    p.set_defaults(func=_cmd_reset)
