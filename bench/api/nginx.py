"""nginx serving one static JSON file over TLS: the peer the agent's request rate is compared to.

Foreground process (``daemon off``), private prefix and config in a temp dir, the same run-time
certificate and the same TLS 1.2 suite list as agent/tlsconfig.py.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from agent.tlsconfig import TLS12_CIPHERS

CONF = """\
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_prefer_server_ciphers on;
        location = /api/v1/session {{
            default_type application/json;
            alias {prefix}/www/session.json;
        }}
    }}
}}
"""


def render_conf(prefix: Path, port: int, chain: Path, key: Path, workers: str) -> str:
    return CONF.format(prefix=prefix, port=port, chain=chain, key=key, workers=workers, ciphers=TLS12_CIPHERS)


class Nginx:
    def __init__(self, prefix: Path, port: int, chain: Path, key: Path, body: bytes, workers: str,
                 cpus: Sequence[int]) -> None:
        self.prefix, self.port = prefix, port
        for sub in ("tmp", "www", "logs"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        (prefix / "www" / "session.json").write_bytes(body)
        # Workers run as an unprivileged user: the served file and its directories must be
        # readable to them (otherwise every answer is a fast 403). The key stays 0600 (read by the
        # master as root).
        for path in (prefix, prefix / "www"):
            path.chmod(0o755)
        (prefix / "www" / "session.json").chmod(0o644)
        conf = prefix / "nginx.conf"
        conf.write_text(render_conf(prefix, port, chain, key, workers))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        cpu_list = ",".join(str(c) for c in cpus)
        self.proc = subprocess.Popen(
            ["taskset", "-c", cpu_list, nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
