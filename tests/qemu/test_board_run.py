"""`make run-qemu` end to end: boot -> provision -> claim -> ffprobe decodes RTSPS from the host;
then a clean power-off through the board's power button."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from qemu.run import Session

pytestmark = [pytest.mark.qemu, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _agent_has(capability_module: str) -> bool:
    text = (ROOT / "agent/capabilities.py").read_text()
    return capability_module in text


def test_boot_provision_claim_stream(release_image: dict[str, object], tmp_path: Path) -> None:
    if not _agent_has("agent.factory") or not _agent_has("agent.rtsp"):
        pytest.skip("factory / RTSP capabilities are not registered in agent/capabilities.py yet")
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe missing")
    session = Session(ROOT / "build", timeout=400)
    try:
        info = session.start()
        assert session.guest is not None
        # The factory lock closed the factory port: the agent (unprivileged) asked init, which
        # re-applied the firewall without it.
        session.guest.wait_for(r"firewall applied \(in: 443,322;", 120)
        conn = session.run_dir / "connection.json"
        assert conn.stat().st_mode & 0o777 == 0o600
        saved = json.loads(conn.read_text())
        for key in ("https_url", "rtsps_main", "rtsps_sub", "ca_file", "username", "password"):
            assert saved[key]
        url = info["rtsps_main"].replace("rtsps://", f"rtsps://{info['username']}:{info['password']}@")
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries", "stream=codec_name,width",
             "-of", "json", "-timeout", "30000000", url],
            capture_output=True, text=True, timeout=180, check=False,
        )
        assert probe.returncode == 0, probe.stderr
        streams = json.loads(probe.stdout)["streams"]
        assert any(s.get("codec_name") in {"h264", "hevc"} for s in streams)
        # Plain RTSP and plain HTTP are not offered (ER-01 2.2): the forwarded TLS port talks TLS only.
        with socket.create_connection(("127.0.0.1", session.https_port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = s.recv(64)
            assert not reply.startswith(b"HTTP/1.")
    finally:
        assert session.guest is not None
        session.stop()
    assert "camera-init: shutting down" in session.guest.output
