"""`camera-provision`: the factory station's command line.

    camera-provision pki init --dir PKI [--pkcs11-module SO --pkcs11-token-label T --pkcs11-pin-file F]
    camera-provision pki station --dir PKI --name NAME
    camera-provision pki show --dir PKI
    camera-provision device --pki PKI --db URL --serial S --model M [--mac MAC] --label-dir OUT HOST:PORT
    camera-provision verify --ca FILE [--serial S] HOST:PORT
    camera-provision export --db URL [--format csv|json] [--out FILE]

Exit codes: 0 success, 1 error, 2 refused (duplicate, mismatch, device said no), 3 unreachable.
PINs come from a file or the environment (CAMERA_PROVISION_PKCS11_PIN), never from argv.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from pathlib import Path

from agent.errors import AgentError
from agent.state import atomic_write
from provisioning import certs, export, pki
from provisioning.db import open_repository
from provisioning.errors import DeviceRefused, DeviceUnreachable, JobRefused, PkiError
from provisioning.station import Job, Station
from provisioning.verify import verify_device

PIN_ENV = "CAMERA_PROVISION_PKCS11_PIN"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _endpoint(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def _pin(args: argparse.Namespace) -> str | None:
    if getattr(args, "pkcs11_pin_file", None):
        return Path(args.pkcs11_pin_file).read_text().strip()
    return os.environ.get(PIN_ENV)


def _add_pin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pkcs11-pin-file", help=f"file holding the token's user PIN (or set {PIN_ENV})")


def _print(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def cmd_pki_init(args: argparse.Namespace) -> int:
    ref = None
    if args.pkcs11_module:
        if not args.pkcs11_token_label:
            raise PkiError("--pkcs11-token-label is required with --pkcs11-module", code="provision.usage")
        ref = pki.Pkcs11Ref(args.pkcs11_module, args.pkcs11_token_label, args.pkcs11_key_label)
    passphrase = Path(args.root_passphrase_file).read_bytes().strip() if args.root_passphrase_file else None
    policy = certs.Policy(organization=args.org, oui=args.oui, tls_days=args.tls_days)
    pki.init_pki(
        Path(args.dir),
        policy=policy,
        station=args.station,
        now=_now(),
        pkcs11=ref,
        pkcs11_pin=_pin(args),
        root_passphrase=passphrase,
    )
    _print(pki.describe(Path(args.dir)))
    return 0


def cmd_pki_station(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    path = pki.add_station(directory, args.name, pki.load_signer(directory, _pin(args)), _now())
    _print({"station": args.name, "certificate": str(path)})
    return 0


def cmd_pki_show(args: argparse.Namespace) -> int:
    _print(pki.describe(Path(args.dir)))
    return 0


async def _provision(args: argparse.Namespace) -> int:
    host, port = args.endpoint
    station_pki = pki.StationPki.load(Path(args.pki), args.station, _pin(args))
    repo = open_repository(args.db)
    try:
        station = Station(station_pki, repo)
        job = Job(serial=args.serial, model=args.model, mac=args.mac, operator=args.operator)
        outcome = await station.provision(job, host, port, Path(args.label_dir), https_port=args.https_port)
    finally:
        repo.close()
    _print(
        {
            "serial": outcome.serial,
            "mac": outcome.mac,
            "status": outcome.status,
            "certificates": outcome.certificates,
            "label": {k: str(v) for k, v in outcome.label_files.items()},
            "timings_ms": outcome.timings_ms,
        }
    )
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    return asyncio.run(_provision(args))


def cmd_verify(args: argparse.Namespace) -> int:
    host, port = args.endpoint
    _print({"valid": True, **verify_device(host, port, Path(args.ca), args.serial, _now())})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    repo = open_repository(args.db)
    try:
        rows = repo.export()
    finally:
        repo.close()
    data = export.to_csv(rows) if args.format == "csv" else export.to_json(rows)
    if args.out:
        atomic_write(Path(args.out), data, 0o644)
    else:
        sys.stdout.buffer.write(data)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camera-provision", description="Factory provisioning station")
    sub = parser.add_subparsers(dest="command", required=True)

    pki_p = sub.add_parser("pki", help="create and inspect the factory PKI")
    pki_sub = pki_p.add_subparsers(dest="pki_command", required=True)
    init = pki_sub.add_parser("init", help="root CA, issuing CA and a first station certificate")
    init.add_argument("--dir", required=True)
    init.add_argument("--org", default="Camera Firmware Reference")
    init.add_argument("--oui", default="000000", help="vendor IEEE OUI for the RFC 9039 product URI")
    init.add_argument("--station", default="station-1", help="name of the first station certificate")
    init.add_argument("--tls-days", type=int, default=3650)
    init.add_argument("--root-passphrase-file", help="encrypt the offline root key with this passphrase")
    init.add_argument("--pkcs11-module", help="PKCS#11 module holding the issuing CA key (e.g. libsofthsm2.so)")
    init.add_argument("--pkcs11-token-label")
    init.add_argument("--pkcs11-key-label", default="factory-issuing-ca")
    _add_pin(init)
    init.set_defaults(func=cmd_pki_init)
    st = pki_sub.add_parser("station", help="issue another station certificate (one per station on a line)")
    st.add_argument("--dir", required=True)
    st.add_argument("--name", required=True)
    _add_pin(st)
    st.set_defaults(func=cmd_pki_station)
    show = pki_sub.add_parser("show", help="describe the PKI")
    show.add_argument("--dir", required=True)
    show.set_defaults(func=cmd_pki_show)

    dev = sub.add_parser("device", help="provision and lock one device in factory state")
    dev.add_argument("--pki", required=True)
    dev.add_argument("--db", required=True, help="sqlite path / sqlite:///path / postgresql://...")
    dev.add_argument("--serial", required=True)
    dev.add_argument("--model", required=True)
    dev.add_argument("--mac")
    dev.add_argument("--label-dir", required=True)
    dev.add_argument("--station", help="station certificate name (when the PKI holds several)")
    dev.add_argument("--operator", default=os.environ.get("USER", "operator"))
    dev.add_argument("--https-port", type=int, help="device HTTPS port, to confirm a lock after a station crash")
    _add_pin(dev)
    dev.add_argument("endpoint", type=_endpoint, metavar="HOST:PORT")
    dev.set_defaults(func=cmd_device)

    ver = sub.add_parser("verify", help="check a device's certificate chain against the factory CA")
    ver.add_argument("--ca", required=True)
    ver.add_argument("--serial")
    ver.add_argument("endpoint", type=_endpoint, metavar="HOST:PORT")
    ver.set_defaults(func=cmd_verify)

    exp = sub.add_parser("export", help="serials and certificate fingerprints (no secrets)")
    exp.add_argument("--db", required=True)
    exp.add_argument("--format", choices=("csv", "json"), default="json")
    exp.add_argument("--out")
    exp.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (JobRefused, DeviceRefused) as exc:
        _print({"error": exc.code, "message": exc.message})
        return 2
    except DeviceUnreachable as exc:
        _print({"error": exc.code, "message": exc.message})
        return 3
    except AgentError as exc:
        _print({"error": exc.code, "message": exc.message})
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
