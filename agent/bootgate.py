"""The boot gate: the agent imports its code while the board's boot stage runs, then waits.

On the board, camera-init starts ``camera-agent run --boot-gate-fd N`` before ``camera-bootverify
boot`` (attestation + firewall), so the two share the emulated CPUs instead of running one after
the other. Fd N is the read end of a pipe (a FIFO camera-init opened for the agent, so the agent
holds it from its first instruction and nothing written can be lost). The agent waits there
before it touches the state directory or opens any socket; camera-init writes ``OPEN`` only after
the boot stage succeeded. End of file (camera-init closed its end without writing), or anything
else, is the boot stage failing: the agent exits without ever listening (fail closed), and
camera-init halts the board as it did before the overlap.
"""

from __future__ import annotations

import hmac
import os
import stat

from agent.errors import AgentError

OPEN = b"open\n"
MAX_READ = 64  # a few bytes are expected; more is refused, not buffered


class BootGateClosed(AgentError):
    code = "boot.gate_closed"


def verdict(received: bytes) -> None:
    """Raises unless ``received`` is exactly the open token."""
    if not hmac.compare_digest(received, OPEN):
        raise BootGateClosed("the boot stage did not succeed; not starting the services")


def _check_pipe(st: os.stat_result) -> None:
    # Only a pipe of the agent's own user that nobody else can open opens the gate.
    if not stat.S_ISFIFO(st.st_mode):
        raise BootGateClosed("boot gate is not a pipe", code="boot.gate_invalid")
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise BootGateClosed("boot gate is not private to this user", code="boot.gate_invalid")


def wait(fd: int) -> None:
    """Block until a line (or end of file) arrives on ``fd``, close it, then judge what came."""
    try:
        _check_pipe(os.fstat(fd))
        received = b""
        while b"\n" not in received and len(received) <= len(OPEN):
            chunk = os.read(fd, MAX_READ)
            if not chunk:
                break
            received += chunk
    finally:
        os.close(fd)
    verdict(received)
