"""`camera-agent run --boot-gate-fd N` (agent.bootgate), what camera-init does on the board: the
agent loads its code, then waits; it touches neither the state directory nor any socket until the
boot stage's "open" arrives, and exits without listening when the gate closes unopened."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import bootgate
from tests.agentharness import free_port, stop_process

WAITING = "modules loaded, waiting for the boot stage"


class GatedAgent:
    def __init__(self, tmp: Path) -> None:
        self.state_dir = tmp / "state"  # not created: the gated agent must not create it either
        # As camera-init: the agent inherits only the read end; the writer stays here.
        reader, self.writer = os.pipe()
        self.port = free_port()
        self.log = tmp / "agent.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(self.state_dir), "--bind", "127.0.0.1",
             "--https-port", str(self.port), "--rtsps-port", str(free_port()), "--boot-gate-fd", str(reader)],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            pass_fds=(reader,))
        os.close(reader)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None and text not in self.output():
                pytest.fail(f"agent exited ({self.proc.returncode}) before {text!r}: {self.output()[-2000:]}")
            if time.monotonic() > end:
                pytest.fail(f"no {text!r} within {timeout} s: {self.output()[-2000:]}")
            time.sleep(0.05)

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def close_writer(self) -> None:
        if self.writer >= 0:
            os.close(self.writer)
            self.writer = -1

    def stop(self) -> None:
        self.close_writer()
        stop_process(self.proc)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[GatedAgent]:
    a = GatedAgent(tmp_path)
    try:
        yield a
    finally:
        a.stop()


def test_closed_gate_agent_exits_without_listening(gated: GatedAgent) -> None:
    gated.wait_for(WAITING)
    assert not gated.listening() and not gated.state_dir.exists()
    gated.close_writer()  # the boot stage failed: camera-init closes the gate unopened
    assert gated.proc.wait(timeout=30) == 2
    assert "boot.gate_closed" in gated.output() and "HTTPS listening" not in gated.output()
    assert not gated.listening() and not gated.state_dir.exists()


def test_open_gate_agent_starts(gated: GatedAgent) -> None:
    gated.wait_for(WAITING)
    assert not gated.state_dir.exists()
    os.write(gated.writer, bootgate.OPEN)
    gated.close_writer()
    gated.wait_for("HTTPS listening")
    assert gated.listening() and gated.state_dir.is_dir()
    # The announcement follows the capabilities started after the listener (media, RTSP, OTA),
    # which load their deferred modules then.
    gated.wait_for("camera-agent: serial")


def test_wrong_token_or_foreign_gate_stays_closed(tmp_path: Path) -> None:
    for bad in (b"", b"open", b"opex\n", b"open\nopen\n", b"open\n" + b"x" * 100):
        with pytest.raises(bootgate.BootGateClosed) as ei:
            bootgate.verdict(bad)
        assert ei.value.code == "boot.gate_closed"
    bootgate.verdict(bootgate.OPEN)
    # Not a pipe, and a FIFO others may open: refused even though "open" is there to read.
    plain = tmp_path / "plain"
    plain.write_bytes(bootgate.OPEN)
    shared = tmp_path / "shared"
    os.mkfifo(shared, 0o600)
    os.chmod(shared, 0o622)  # noqa: S103 - others may write: the gate must refuse it
    writer = os.open(shared, os.O_RDWR)
    try:
        os.write(writer, bootgate.OPEN)
        for fd in (os.open(plain, os.O_RDONLY), os.open(shared, os.O_RDONLY)):
            with pytest.raises(bootgate.BootGateClosed) as ei:
                bootgate.wait(fd)
            assert ei.value.code == "boot.gate_invalid"
    finally:
        os.close(writer)
    # A line written in pieces before the reader looks still opens it.
    r, w = os.pipe()
    os.write(w, b"op")
    os.write(w, b"en\n")
    os.close(w)
    bootgate.wait(r)


# Loaded after HTTPS answers or on first use, never before the listener (each module imported
# before it is on the board's boot-time critical path: docs/benchmarks-boot.md).
AFTER_LISTENER = {
    # PyAV: the media pipelines import it in their own threads.
    "av",
    # The RTSP server: RtspCapability.start(), after the listener.
    "agent.rtsp.handler", "agent.rtsp.server", "agent.rtsp.digest", "agent.rtsp.feeds",
    # Media internals: MediaCapability.start(), after the listener.
    "agent.media.frames", "agent.media.annexb", "agent.media.pipeline", "agent.media.talk",
    # The OTA chain: OtaCapability.start(), after the listener; the bundle chain (CMS, ASN.1,
    # squashfs, verity) with the first update.
    "agent.ota.config", "agent.ota.installer", "agent.ota.pull", "agent.ota.slots", "agent.ota.bootchooser",
    "agent.ota.antirollback", "agent.ota.ubootenv", "agent.ota.schedule", "agent.ota.pipeline",
    "bootverify.bundle.cms", "bootverify.bundle.bundle", "asn1crypto",
    # The factory endpoint: only a device in factory state loads it (not an inactive or locked one).
    "agent.factory.device", "agent.factory.server", "agent.factory.protocol", "agent.factory.reset",
    # The syslog forwarder: only when forwarding is configured; RFC 5424 rendering with an export.
    "agent.audit.forward", "agent.audit.rfc5424",
}

_LOAD_SCRIPT = """
import sys
from pathlib import Path
from agent import capabilities
from agent.cli import build_parser
from agent.config import build_config
from agent.identity import provisioned
from agent.runtime import build_services
build_parser()  # what `camera-agent run` does first: registers every command group
capabilities.preload()
svc = build_services(build_config(Path(STATE), {"bind": "127.0.0.1"}, factory_ca=FACTORY_CA, factory_port=PORT))
if LOCKED:
    provisioned.record_path(svc.state).parent.mkdir(parents=True, exist_ok=True)
    provisioned.record_path(svc.state).write_bytes(b"{}")  # only its presence is read here
before = set(sys.modules)
caps = capabilities.load(svc)
late = sorted(m for m in set(sys.modules) - before if m.startswith("agent."))
assert not late, late
assert [c.name for c in caps] == ["core", "audit", "factory", "media", "rtsp", "ota"]
print(" ".join(sorted(sys.modules)))
svc.audit.close()
"""


def _modules_after_load(state: Path, *, factory_ca: Path | None = None, locked: bool = False) -> set[str]:
    script = (_LOAD_SCRIPT.replace("STATE", repr(str(state))).replace("FACTORY_CA", repr(factory_ca))
              .replace("PORT", "None" if factory_ca is None else str(free_port())).replace("LOCKED", repr(locked)))
    script = "from pathlib import PosixPath\n" + script
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split())


def test_preload_covers_load_and_defers_the_rest(tmp_path: Path) -> None:
    """After preload (what runs during the boot stage) building the capabilities imports nothing
    of the agent's, and none of what is needed only after the listener is loaded before it."""
    inactive = _modules_after_load(tmp_path / "inactive")  # host mode: no factory trust anchor
    # A locked device (provisioned): the factory port never opens; the anchor is not even read.
    locked = _modules_after_load(tmp_path / "locked", factory_ca=tmp_path / "unread.pem", locked=True)
    for name, loaded in (("inactive", inactive), ("locked", locked)):
        assert {"agent.factory.capability", "agent.media.capability", "agent.ota.capability"} <= loaded
        early = {m for m in loaded if m in AFTER_LISTENER or m.split(".")[0] in AFTER_LISTENER}
        assert not early, (name, sorted(early))
