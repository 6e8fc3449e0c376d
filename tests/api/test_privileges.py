"""The agent gives up root for good (agent/privileges.py), and asks init for the firewall re-apply
and the counter raise through a FIFO instead of doing them itself (agent/rootrequest.py)."""

from __future__ import annotations

import errno
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from agent.privileges import PrivilegeError, drop_to
from agent.rootrequest import FIREWALL_REFRESH, send

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import os, sys
from agent.privileges import drop_to
drop_to(sys.argv[1])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(os.getresuid(), os.getresgid(), os.getgroups(), oct(os.umask(0)),
      status["CapEff"].strip(), status["CapPrm"].strip())
try:
    open("/proc/1/environ", "rb").read()
    print("read-init-environ")
except PermissionError:
    print("denied")
"""


def _unprivileged_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_drop_to_leaves_no_uid_gid_or_capability() -> None:
    pw = _unprivileged_user()
    out = subprocess.run([sys.executable, "-c", _CHILD, pw.pw_name], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout.splitlines()
    ids = f"({pw.pw_uid}, {pw.pw_uid}, {pw.pw_uid}) ({pw.pw_gid}, {pw.pw_gid}, {pw.pw_gid})"
    assert out[0].startswith(ids), out
    assert "0o77 0000000000000000 0000000000000000" in out[0], out
    assert out[1] == "denied"


@pytest.mark.parametrize("user", ["root", "no-such-user-for-sure"])
def test_drop_to_refuses_root_and_unknown_users(user: str) -> None:
    before = (os.getresuid(), os.getresgid(), os.getgroups())
    with pytest.raises(PrivilegeError) as info:
        drop_to(user)
    assert info.value.code == "agent.privileges"
    assert (os.getresuid(), os.getresgid(), os.getgroups()) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="as root the drop would succeed")
def test_drop_to_another_user_without_root_raises() -> None:
    others = [p for p in pwd.getpwall() if p.pw_uid not in (0, os.getuid()) and p.pw_gid != 0]
    if not others:
        pytest.skip("no other user")
    with pytest.raises(PrivilegeError):
        drop_to(others[0].pw_name)


def test_refresh_request_reaches_the_reader(tmp_path: Path) -> None:
    fifo = tmp_path / "firewall-refresh"
    os.mkfifo(fifo, 0o600)
    # A reader that holds the FIFO open (init's `read < fifo` blocks in open and counts as one).
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        send(fifo, FIREWALL_REFRESH)
        assert os.read(fd, 64) == FIREWALL_REFRESH
    finally:
        os.close(fd)


def test_refresh_request_without_reader_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "firewall-refresh"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(OSError) as info:
        send(fifo, FIREWALL_REFRESH)
    assert info.value.errno == errno.ENXIO


def test_refresh_request_into_a_regular_file_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-fifo"
    plain.write_bytes(b"")
    with pytest.raises(OSError) as info:
        send(plain, FIREWALL_REFRESH)
    assert info.value.errno == errno.EINVAL
    assert plain.read_bytes() == b""
