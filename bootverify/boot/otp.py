"""Root's side of the board's simulated OTP: the anti-rollback counter and the device secret.

On hardware both sit in fuses, an RPMB partition or a TPM, behind an interface the application
processor's unprivileged code can read but never lower. The board keeps them in ``/data/otp``
and gives the agent the same shape: the directory and its two files belong to root and are
readable, not writable, by the agent's group (0750 / 0640), and camera-init bind-mounts the
directory onto itself, so the agent, which owns the rest of ``/data``, can neither rename it away
nor put another directory in its place (a mount point cannot be renamed or removed: EBUSY).
Root raises the counter when the agent asks (after mark-good), to the running image's signed
security version, never to a number the agent names (bootverify.cli ``rollback --raise-to-image``).

``seal`` runs in the boot stage before the agent may touch ``/data``; it also adopts an OTP
directory that an older firmware left to the agent.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from pathlib import Path

from bootverify.boot.errors import OtpError
from bootverify.boot.rollback import COUNTER_FILE
from bootverify.fsutil import atomic_write

SECRET_FILE = "device-secret"  # noqa: S105 - a file name
SECRET_LEN = 32
DIR_MODE = 0o750
FILE_MODE = 0o640
KNOWN_FILES = (COUNTER_FILE, SECRET_FILE)


def seal(otp_dir: Path, gid: int) -> list[str]:
    """Make ``otp_dir`` and its files root's, readable by ``gid``; create the device secret from
    the kernel RNG if there is none. Returns the names of the entries it removed.

    A counter or secret that is not a regular file is tampering: ``OtpError``, never "reset"
    (removing a counter would be counter 0). Anything else in the directory (the temp file of a
    write a power cut interrupted, whatever a former owner left) is removed."""
    try:
        os.mkdir(otp_dir, DIR_MODE)
    except FileExistsError:
        pass
    try:
        dfd = os.open(otp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file in its place
        raise OtpError(f"{otp_dir} is not a directory ({exc.strerror})") from exc
    removed: list[str] = []
    try:
        # Owner first: from here on the agent's user (if it owned the directory) cannot change it.
        os.fchown(dfd, 0, gid)
        os.fchmod(dfd, DIR_MODE)
        names = sorted(os.listdir(dfd))
        for name in names:
            st = os.lstat(name, dir_fd=dfd)
            if name in KNOWN_FILES:
                if not stat.S_ISREG(st.st_mode):
                    raise OtpError(f"{otp_dir / name} is not a regular file (tampering)")
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
                try:
                    os.fchown(fd, 0, gid)
                    os.fchmod(fd, FILE_MODE)
                finally:
                    os.close(fd)
            elif stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=dfd)
                removed.append(name)
            else:
                os.unlink(name, dir_fd=dfd)
                removed.append(name)
        if SECRET_FILE not in names:  # a present secret was kept (or raised) above
            # getrandom(2): blocks until the kernel's CRNG is seeded (virtio-rng on this board).
            atomic_write(otp_dir / SECRET_FILE, secrets.token_bytes(SECRET_LEN), FILE_MODE, group=gid)
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return removed
