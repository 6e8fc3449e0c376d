"""Requests from the unprivileged agent to the board's init (root), through one FIFO.

The agent may not touch the firewall or the simulated OTP; for the two things it legitimately
needs from them it writes one fixed line into the FIFO that camera-init reads
(``camera-agent run --root-requests FIFO``). A request names an action and carries no value or
policy: init computes the rules from the boot stage's code and the counter from the running
image's signed security version, so all a compromised agent can ask for is the same thing again
(init serves at most one request per two seconds).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

FIREWALL_REFRESH = b"refresh\n"
"""Re-apply the firewall from the state as at boot, minus the factory port (after the lock)."""
RAISE_COUNTER = b"raise-counter\n"
"""Raise the anti-rollback counter to the running image's security version (after mark-good)."""


def send(fifo: Path, request: bytes) -> None:
    """One request line into ``fifo``, without blocking: raises ``OSError`` (ENXIO) when nobody
    reads it, i.e. when init is not waiting for requests, and EINVAL for anything but a FIFO."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a FIFO", str(fifo))
        os.write(fd, request)  # shorter than PIPE_BUF: all or nothing
    finally:
        os.close(fd)
