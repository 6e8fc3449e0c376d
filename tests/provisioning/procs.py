"""Real processes for the kill -9 tests: host-mode devices and the `camera-provision` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.provisioning.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
FAULT_ENV = "CAMERA_FACTORY_FAULT"


def _env(fault: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if fault:
        env[FAULT_ENV] = fault
    return env


class DeviceProcess:
    def __init__(self, state_dir: Path, factory_ca: Path, serial: str, model: str = "RC-1000") -> None:
        self.state_dir = state_dir
        self.factory_ca = factory_ca
        self.serial = serial
        self.model = model
        self.factory_port = free_port()
        self.https_port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    def start(self, fault: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.factory.hostdevice",
                "--state-dir",
                str(self.state_dir),
                "--factory-ca",
                str(self.factory_ca),
                "--factory-port",
                str(self.factory_port),
                "--https-port",
                str(self.https_port),
                "--serial",
                self.serial,
                "--model",
                self.model,
            ],
            cwd=ROOT,
            env=_env(fault),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"device did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")

    def wait_dead(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


def provision_cli(args: list[str], fault: str | None = None, timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "provisioning.cli", *args],
        cwd=ROOT,
        env=_env(fault),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out: dict[str, Any] = {}
    if res.stdout.strip():
        try:
            out = json.loads(res.stdout)
        except ValueError:
            out = {"raw": res.stdout}
    out["_stderr"] = res.stderr[-2000:]
    out["_elapsed"] = time.monotonic() - started
    return res.returncode, out
