"""The boot gate: the agent imports its code while the board's boot stage runs, then waits.

On the board, camera-init starts ``camera-agent run --boot-gate FIFO`` before ``camera-bootverify
boot`` (attestation + firewall), so the two share the emulated CPUs instead of running one after
the other. The agent waits at the gate before it touches the state directory or opens any socket;
camera-init writes ``OPEN`` into the FIFO only after the boot stage succeeded. End of file, or
anything else, is the boot stage failing: the agent exits without ever listening (fail closed),
and camera-init halts the board as it did before the overlap.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from agent.errors import AgentError

OPEN = b"open\n"
MAX_READ = 64  # a few bytes are expected; more is refused, not buffered


class BootGateClosed(AgentError):
    code = "boot.gate_closed"


def verdict(received: bytes) -> None:
    """Raises unless ``received`` is exactly the open token (the writer's whole output)."""
    if not hmac.compare_digest(received, OPEN):
        raise BootGateClosed("the boot stage did not succeed; not starting the services")


def _check_fifo(st: os.stat_result) -> None:
    # Only a FIFO the agent's own user made and nobody else can write opens the gate.
    if not stat.S_ISFIFO(st.st_mode):
        raise BootGateClosed("boot gate is not a FIFO", code="boot.gate_invalid")
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise BootGateClosed("boot gate is not private to this user", code="boot.gate_invalid")


def wait(path: Path) -> None:
    """Block until a line (or end of file) arrives at the gate, then judge it.

    The open blocks until a writer holds the FIFO (camera-init opens it read-write before it
    starts the agent, so it does not). End of file comes when every writer closed it, which is
    how camera-init says no.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check_fifo(os.fstat(fd))
        received = b""
        while b"\n" not in received and len(received) <= len(OPEN):
            chunk = os.read(fd, MAX_READ)
            if not chunk:
                break
            received += chunk
    finally:
        os.close(fd)
    verdict(received)
