"""A real PostgreSQL 15 server for the tests: initdb into a tmp dir, loopback only, SCRAM with a
password generated now. Run as the `postgres` user when the tests run as root (initdb refuses root)."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.provisioning.helpers import free_port

_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")


def _tool(name: str) -> str | None:
    for d in _BIN_DIRS:
        if Path(d, name).exists():
            return str(Path(d, name))
    return shutil.which(name)


def available() -> bool:
    return _tool("initdb") is not None and _tool("pg_ctl") is not None


@contextmanager
def postgres_server() -> Iterator[str]:
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    assert initdb and pg_ctl
    root = Path(tempfile.mkdtemp(prefix="camera-pg-"))
    data = root / "data"
    pwfile = root / "pw"
    password = secrets.token_urlsafe(24)
    pwfile.write_text(password)
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (root,):
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    try:
        subprocess.run(
            [
                *prefix,
                initdb,
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        pwfile.unlink()
        subprocess.run(
            [
                *prefix,
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
