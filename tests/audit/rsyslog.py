"""A real rsyslogd (Debian's, gtls driver) as an unprivileged foreground process on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

RSYSLOGD = "/usr/sbin/rsyslogd"
NOBODY = 65534

# One line per received message: the parsed RFC 5424 fields, then the MSG part.
CONF = """
global(workDirectory="{work}"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{ca}"
  DefaultNetstreamDriverCertFile="{cert}"
  DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" {auth})
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="fields" type="string"
  string="%syslogfacility%|%syslogseverity%|%hostname%|%app-name%|%msgid%|%structured-data%|%msg%\\n")
action(type="omfile" file="{out}" template="fields")
"""


class Rsyslog:
    def __init__(self, port: int, *, ca_pem: bytes, cert_pem: bytes, key_pem: bytes,
                 permitted_peer: str | None) -> None:
        """``permitted_peer``: require a client certificate with that name (x509/name); None lets
        any client in (anon) - the server is still authenticated by the client."""
        # Not under pytest's tmp_path: that tree is 0700 root, and the daemon runs as nobody.
        self.dir = Path(tempfile.mkdtemp(prefix="audit-rsyslog-"))
        self.port = port
        self.out = self.dir / "out" / "received.log"
        (self.dir / "work").mkdir()
        (self.dir / "out").mkdir()
        (self.dir / "ca.pem").write_bytes(ca_pem)
        (self.dir / "server.pem").write_bytes(cert_pem)
        (self.dir / "server.key").write_bytes(key_pem)
        os.chmod(self.dir / "server.key", 0o600)
        (self.dir / "rsyslog.conf").write_text(CONF.format(
            work=self.dir / "work", ca=self.dir / "ca.pem", cert=self.dir / "server.pem",
            key=self.dir / "server.key", port=port, out=self.out,
            auth=f'StreamDriver.AuthMode="x509/name" PermittedPeer=["{permitted_peer}"]' if permitted_peer
            else 'StreamDriver.AuthMode="anon"'))
        if os.geteuid() == 0:
            for root, dirs, files in os.walk(self.dir):
                for name in [*dirs, *files]:
                    os.chown(os.path.join(root, name), NOBODY, NOBODY)
            os.chown(self.dir, NOBODY, NOBODY)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "rsyslogd.stderr"

    def start(self, timeout: float = 15.0) -> None:
        cmd = [RSYSLOGD, "-n", "-f", str(self.dir / "rsyslog.conf"), "-i", str(self.dir / "rsyslogd.pid")]
        if os.geteuid() == 0:
            cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "rsyslogd.pid").unlink()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {self.log.read_text()[-2000:]}")
            if (self.dir / "rsyslogd.pid").exists():
                # pidfile is written once inputs are set up; the port must accept too.
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rsyslogd did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def lines(self) -> list[str]:
        try:
            return self.out.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
