"""`camera-agent run --factory-ca --factory-port` as a real process, provisioned by the real CLI."""

from __future__ import annotations

import inspect
import json
import socket
from pathlib import Path

import pytest

from agent import capabilities
from tests.agentharness import start_agent_process
from tests.provisioning.helpers import free_port
from tests.provisioning.procs import provision_cli


@pytest.mark.slow
def test_camera_agent_run_factory_state(tmp_path: Path, shared_pki: Path) -> None:
    if "FactoryCapability" not in inspect.getsource(capabilities):
        pytest.skip("FactoryCapability is not registered in agent/capabilities.py yet (lead's file)")
    factory_port = free_port()
    device_serial = "AGENT00001"
    agent = start_agent_process(
        tmp_path / "state",
        "--factory-ca",
        str(shared_pki / "root-ca.pem"),
        "--factory-port",
        str(factory_port),
        config={"bind": "127.0.0.1", "device": {"serial": device_serial}},
    )
    try:
        # No host-mode setup code in factory state: the label will carry the only one.
        assert not (tmp_path / "state" / "setup-code").exists()
        session = json.loads((tmp_path / "state" / "data" / "identity" / "factory" / "session.json").read_text())
        assert session["phase"] == "new"
        rc, out = provision_cli(
            [
                "device",
                "--pki",
                str(shared_pki),
                "--station",
                "station-1",
                "--db",
                str(tmp_path / "f.db"),
                "--serial",
                device_serial,
                "--model",
                "RC-1000",
                "--label-dir",
                str(tmp_path / "labels"),
                f"127.0.0.1:{factory_port}",
            ]
        )
        assert rc == 0, out
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", factory_port), timeout=2):
            pass
        rc, out = provision_cli(
            [
                "verify",
                "--ca",
                str(shared_pki / "root-ca.pem"),
                "--serial",
                device_serial,
                f"127.0.0.1:{agent.https_port}",
            ]
        )
        assert rc == 0, out
    finally:
        agent.stop()
