"""`camera-agent`: run the device services (host mode or on the device) and maintenance commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import capabilities
from agent.config import build_config, load_config_file
from agent.errors import AgentError


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("port must be 1..65535")
    return port


def _cmd_run(args: argparse.Namespace) -> int:
    if args.user is not None:
        from agent.privileges import drop_to

        drop_to(args.user)
    from agent.runtime import run

    file_values = load_config_file(args.config) if args.config else {}
    if args.bind:
        file_values["bind"] = args.bind
    if args.root_requests:
        file_values.setdefault("board", {})["root_requests"] = str(args.root_requests)
    config = build_config(
        args.state_dir,
        file_values,
        https_port=args.https_port,
        rtsps_port=args.rtsps_port,
        factory_ca=args.factory_ca,
        factory_port=args.factory_port,
        host_mode=not args.device,
    )
    return run(config, boot_gate_fd=args.boot_gate_fd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camera-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run all device services")
    run.add_argument("--state-dir", type=Path, required=True, help="persistent state (the data partition)")
    run.add_argument("--config", type=Path, help="JSON config file")
    run.add_argument("--https-port", type=_port)
    run.add_argument("--rtsps-port", type=_port)
    run.add_argument("--bind", help="listen address (default 0.0.0.0)")
    run.add_argument("--factory-ca", type=Path, help="factory CA (trust anchor) - device starts in factory state")
    run.add_argument("--factory-port", type=_port, help="port of the mutual-TLS factory endpoint")
    run.add_argument("--device", action="store_true", help="device mode (no host-mode setup-code file)")
    run.add_argument("--user", help="become this unprivileged user first (the board starts the agent as root)")
    run.add_argument("--root-requests", "--firewall-refresh", dest="root_requests", type=Path, metavar="FIFO",
                     help="the board's init (root) reads requests here: re-apply the firewall without the factory "
                          "port after the lock, raise the anti-rollback counter after mark-good (agent/rootrequest.py)")
    run.add_argument("--boot-gate-fd", type=int, metavar="FD",
                     help="inherited pipe: load the code, then wait for 'open' on it before touching state or sockets")
    run.set_defaults(func=_cmd_run)
    capabilities.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except AgentError as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
