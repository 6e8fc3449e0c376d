"""``camera-agent ota ...``: install / status / mark-good / boot (host-mode bootloader simulation).

    camera-agent ota install --state-dir DIR [--keyring FILE] [--config FILE] BUNDLE   (exit 0 only on success)
    camera-agent ota status --state-dir DIR                                             (JSON)
    camera-agent ota mark-good --state-dir DIR
    camera-agent ota boot --state-dir DIR          host mode: run the boot-chooser as U-Boot would

Every step is written to the device's audit log, as from the API (actor ``local-cli``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import build_config, load_config_file
from agent.errors import AgentError
from agent.ota.errors import OtaRefused
from agent.state import StateDir

if TYPE_CHECKING:
    from agent.ota.installer import Installer


@contextmanager
def _installer(args: argparse.Namespace) -> Iterator[Installer]:
    # Here, not at the top: registering the commands (every agent start) must not load the
    # installer chain.
    from agent.audit.log import AuditLog
    from agent.devicesecret import FileDeviceSecret
    from agent.ota.config import build_installer

    state = StateDir.open(Path(args.state_dir))
    values = load_config_file(Path(args.config)) if args.config else {}
    config = build_config(state.root, values, host_mode=not args.device)
    audit = AuditLog(state.audit_dir, FileDeviceSecret(state.device_secret_file).derive("audit-mac"))

    def record(event: str, outcome: str, details: Mapping[str, Any]) -> None:
        audit.append(event, outcome=outcome, actor="local-cli", source="cli", details=details)

    try:
        yield build_installer(config, state, record, keyring_path=Path(args.keyring) if args.keyring else None)
    finally:
        audit.close()


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _cmd(args: argparse.Namespace) -> int:
    try:
        with _installer(args) as inst:
            if args.ota_cmd == "install":
                res = inst.install(Path(args.bundle).resolve(), source="cli")
                _print({"ok": True, "slot": res.slot, "version": res.version,
                        "security_version": res.security_version, "bytes": res.bytes_written})
            elif args.ota_cmd == "status":
                _print(inst.status())
            elif args.ota_cmd == "mark-good":
                _print({"ok": True, **inst.confirm()})
            elif args.ota_cmd == "boot":
                _print({"ok": True, "booted": inst.simulate_boot()})
    except OtaRefused as exc:
        # Opaque on purpose; the precise reason is in the audit log (firmware.* records).
        print(json.dumps({"ok": False, "code": exc.code, "error": exc.message}), file=sys.stderr)
        return 1
    except AgentError as exc:
        print(json.dumps({"ok": False, "code": exc.code, "error": exc.message}), file=sys.stderr)
        return 1
    return 0


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ota = sub.add_parser("ota", help="firmware update: install, status, mark-good")
    ota_sub = ota.add_subparsers(dest="ota_cmd", required=True)
    for name, help_text in (("install", "verify and install a bundle into the inactive slot"),
                            ("status", "slots, versions, rollback index, boot order, last result"),
                            ("mark-good", "confirm the booted slot (raises the rollback index)"),
                            ("boot", "host mode: simulate the bootloader's slot choice")):
        p = ota_sub.add_parser(name, help=help_text)
        p.add_argument("--state-dir", required=True, type=Path)
        p.add_argument("--config", type=Path, help="agent JSON config (section 'ota')")
        p.add_argument("--keyring", type=Path, help="release root certificate(s), overrides ota.keyring")
        p.add_argument("--device", action="store_true", help="device mode (slots/boot from config)")
        if name == "install":
            p.add_argument("bundle", type=Path)
        p.set_defaults(func=_cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="camera-agent")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
