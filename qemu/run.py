"""`make run-qemu`: boot the board image, provision it, claim it, print how to connect.

Steps: a dev factory PKI made locally (once, under build/run/pki; its root CA is baked into the
image as the factory trust anchor), the image built when needed, QEMU with user networking
forwarding HTTPS, RTSPS and the factory port to 127.0.0.1, `camera-provision device` against the
factory port, `POST /api/v1/claim` with the label's setup code and a generated password, then the
connection details on stdout and in build/run/connection.json (0600). Stays in the foreground;
SIGINT/SIGTERM power the guest down (the agent is stopped and the data partition unmounted by the
guest's init) before QEMU exits.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from qemu import build_image
from qemu.board import BoardRun, Forward
from qemu.vm import Guest

ROOT = Path(__file__).resolve().parent.parent
FACTORY_PORT = 8444
MODEL = "RC-1000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(3)
                # slirp accepts on the host side even when the guest is not listening yet; a TLS
                # handshake is what proves the guest service answers.
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                with ctx.wrap_socket(s):
                    return time.monotonic() - t0
        except (OSError, ssl.SSLError):
            time.sleep(0.5)
    raise TimeoutError(f"port {port} did not answer TLS within {timeout} s")


def provision_cli(build: Path) -> list[str]:
    venv_bin = Path(sys.executable).parent
    exe = venv_bin / "camera-provision"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "provisioning.cli"]


def ensure_pki(build: Path) -> Path:
    """The dev factory PKI the image build made (build/factory-pki); its root is in the image."""
    return build / "factory-pki"


def claim(https_port: int, ca_file: Path | None, setup_code: str, username: str, password: str) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()
    if ca_file is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = False  # the certificate names the device serial, we reach it as 127.0.0.1
    body = json.dumps({"setup_code": setup_code, "username": username, "password": password}).encode()
    req = urllib.request.Request(
        f"https://127.0.0.1:{https_port}/api/v1/claim", data=body, method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=60) as resp:  # noqa: S310
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"claim refused: HTTP {exc.code} {exc.read()[:500]!r}") from exc


class Session:
    """A booted, provisioned and claimed board (used by `make run-qemu` and tests/qemu)."""

    def __init__(self, build: Path, profile: str = "release", *, https_port: int = 0, rtsps_port: int = 0,
                 provision: bool = True, timeout: float = 600.0, run_dir: Path | None = None) -> None:
        self.build = build.resolve()
        self.run_dir = run_dir or self.build / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.board: BoardRun | None = None
        self.boots = 0
        self.profile = profile
        self.https_port = https_port or free_port()
        self.rtsps_port = rtsps_port or free_port()
        self.factory_port = free_port()
        self.provision = provision
        self.timeout = timeout
        self.info: dict[str, Any] = {}
        self.guest: Guest | None = None

    def start(self) -> dict[str, Any]:
        manifest = build_image.Builder(self.build, self.profile, "1.0.0", 1).build_all()
        # The guest's disk is a copy: the build output stays pristine and each run starts fresh.
        disk = self.run_dir / "disk.img"
        subprocess.run(["cp", "--sparse=always", str(manifest["disk"]), str(disk)], check=True)
        board = BoardRun(
            bios=Path(str(manifest["bios"])), disk=disk,
            forwards=(Forward(self.https_port, 443), Forward(self.rtsps_port, 322),
                      Forward(self.factory_port, FACTORY_PORT)),
            qmp=self.run_dir / "qmp.sock",
        )
        self.board = board
        t_ready = self._power_on()
        guest = self.guest
        assert guest is not None
        info: dict[str, Any] = {
            "https_url": f"https://127.0.0.1:{self.https_port}/",
            "rtsps_main": f"rtsps://127.0.0.1:{self.rtsps_port}/main",
            "rtsps_sub": f"rtsps://127.0.0.1:{self.rtsps_port}/sub",
            "boot_to_ready_s": round(t_ready, 1),
            "console_log": str(self.run_dir / "console.log"),
        }
        if self.provision:
            pki = ensure_pki(self.build)
            labels = self.run_dir / "labels"
            # The board reports the serial it derives from its (simulated) OTP; the station must
            # provision that serial, so take it from the agent's start-up line on the console.
            serial = guest.wait_for(r"camera-agent: serial ([A-Z0-9]{4,32}),", 120).group(1)
            wait_port(self.factory_port, 120)
            proc = subprocess.run(
                [*provision_cli(self.run_dir), "device", "--pki", str(pki), "--db",
                 str(self.run_dir / "factory.db"), "--serial", serial, "--model", MODEL, "--label-dir",
                 str(labels), "--https-port", str(self.https_port), f"127.0.0.1:{self.factory_port}"],
                check=False, capture_output=True, text=True, timeout=300,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"camera-provision device failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
            out = proc.stdout
            result = json.loads(out) if out.strip() else {}
            setup_code = _find_setup_code(result, labels, serial)
            ca_file = pki / "root-ca.pem"
            username = "admin-" + secrets.token_hex(3)
            password = secrets.token_urlsafe(18)
            claim(self.https_port, ca_file, setup_code, username, password)
            info.update({"ca_file": str(ca_file), "username": username, "password": password, "serial": serial})
        self.info = info
        conn = self.run_dir / "connection.json"
        fd = os.open(conn, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh, indent=2)
        return info

    def _power_on(self) -> float:
        """Start QEMU on the session's disk; seconds until the agent answers TLS."""
        assert self.board is not None
        if self.board.qmp is not None:
            self.board.qmp.unlink(missing_ok=True)
        log = self.run_dir / ("console.log" if self.boots == 0 else f"console-{self.boots}.log")
        self.boots += 1
        self.guest = guest = Guest(self.board, log, deadline_s=10 * 365 * 86400)
        t0 = time.monotonic()
        guest.start()
        guest.wait_for(r"camera-init: agent started", self.timeout)
        t_agent = time.monotonic() - t0
        t_ready = wait_port(self.https_port, self.timeout) + t_agent
        print(f"[run] agent answering TLS {t_ready:.1f} s after QEMU start", flush=True)
        return t_ready

    def power_cycle(self) -> float:
        """Press the power button (clean shutdown: agent stopped, /data unmounted), then power the
        same board on again - what an installer does after an update. Returns boot-to-ready seconds;
        the new console is ``self.guest``."""
        assert self.guest is not None
        _shutdown(self.guest)
        return self._power_on()

    def stop(self) -> None:
        if self.guest is not None:
            _shutdown(self.guest)
        (self.run_dir / "connection.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, default=ROOT / "build")
    ap.add_argument("--profile", choices=("release", "dev"), default="release")
    ap.add_argument("--https-port", type=int, default=0, help="host port for HTTPS (default: free port)")
    ap.add_argument("--rtsps-port", type=int, default=0, help="host port for RTSPS (default: free port)")
    ap.add_argument("--no-provision", action="store_true", help="boot only")
    ap.add_argument("--timeout", type=float, default=600.0, help="boot-to-ready limit in seconds")
    args = ap.parse_args(argv)
    session = Session(args.build, args.profile, https_port=args.https_port, rtsps_port=args.rtsps_port,
                      provision=not args.no_provision, timeout=args.timeout)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        info = session.start()
        print(json.dumps({k: v for k, v in info.items() if k != "password"}, indent=2))
        print(f"[run] credentials in {session.run_dir / 'connection.json'} (0600). Ctrl-C to stop.", flush=True)
        while session.guest is not None and session.guest.running:
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        session.stop()


def _find_setup_code(result: dict[str, Any], labels: Path, serial: str) -> str:
    # The station names the label it just printed; a label left by an earlier run of the same
    # serial (a re-provisioned board) must not be picked up instead.
    label = result.get("label")
    candidates = [Path(label["json"])] if isinstance(label, dict) and "json" in label else [labels / f"{serial}.json"]
    for path in candidates:
        if path.exists():
            doc = json.loads(path.read_text())
            if isinstance(doc, dict) and isinstance(doc.get("setup_code"), str):
                return str(doc["setup_code"])
    raise SystemExit(f"no setup code for {serial} in the station output or {labels}")


def _shutdown(guest: Guest) -> None:
    if not guest.running:
        return
    # The power button (gpio-keys KEY_POWER) makes the guest's init stop the agent, sync and
    # unmount /data, then power off; QEMU exits with the guest.
    print("[run] shutting the guest down", flush=True)
    if guest.powerdown(60):
        print("[run] guest powered off cleanly", flush=True)
    else:
        print("[run] guest did not power off in time; killed", flush=True)
        guest.kill()


if __name__ == "__main__":
    raise SystemExit(main())
