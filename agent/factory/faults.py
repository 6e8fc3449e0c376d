"""Crash injection for the kill -9 tests: with CAMERA_FACTORY_FAULT=<point> set in its environment a
process SIGKILLs itself when it reaches that point (after the step's state was persisted).

Unset (always, in production) it does nothing. Setting another process's environment already
requires control of that process, so this opens nothing an attacker does not already have.
"""

from __future__ import annotations

import os
import signal

ENV = "CAMERA_FACTORY_FAULT"


def checkpoint(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
