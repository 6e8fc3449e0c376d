"""Hand the data partition to the agent's user, except what root keeps (the simulated OTP).

The boot stage runs as root and writes its records into ``/data`` first; then the unprivileged
agent gets everything in it but ``otp/`` (bootverify.boot.otp). Every entry is changed with
``lchown`` semantics, walking by file descriptor: a symlink the agent planted during the
previous boot is re-owned itself, its target (say, a device node) never.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path


def hand_over(root: Path, uid: int, gid: int, *, keep: Collection[str] = ("otp",)) -> int:
    """``chown -R uid:gid root`` without following symlinks and without the top-level entries
    named in ``keep`` (nor anything below them). Returns the number of entries changed."""
    count = 0
    top = True
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        if top:
            top = False
            os.chown(dirfd, uid, gid)
            count += 1
            dirnames[:] = [d for d in dirnames if d not in keep]  # fwalk does not descend into them
            filenames = [f for f in filenames if f not in keep]
        for name in (*dirnames, *filenames):
            os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
            count += 1
    return count
