"""Crash-safe file replacement for bootverify (which must not import ``agent``).

``atomic_replace`` yields a temp file next to the target, created with the final mode (never more
open, even briefly); on a clean exit it is flushed, fsynced, renamed over the target and the
directory fsynced, so a crash leaves the old or the new file, never a mix. On an exception the
temp file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_replace(path: Path, mode: int = 0o600, *, group: int | None = None) -> Iterator[BinaryIO]:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        if group is not None:  # before the rename: the file never appears with another group
            os.fchown(fd, -1, group)
        os.fchmod(fd, mode)  # the umask must not change what the caller asked for
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, group: int | None = None) -> None:
    with atomic_replace(path, mode, group=group) as fh:
        fh.write(data)


def read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``. The boot stage and init's firewall
    re-apply read /data as root while the unprivileged agent owns it: a symlink there is not
    followed (ELOOP) and a FIFO or device is refused without blocking (EINVAL)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        while limit > 0 and (chunk := os.read(fd, limit)):
            chunks.append(chunk)
            limit -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
