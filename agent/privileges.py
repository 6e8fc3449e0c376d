"""Giving up root for good (ETSI EN 303 645 5.6-7: least privilege).

On the board camera-init (PID 1, root) starts the agent, which parses HTTP, RTSP and audio from the
network; the agent becomes the unprivileged ``camera`` user first thing, before it imports its
services or touches /data. What root keeps to itself is then out of the agent's reach even if it
is compromised: the firewall and its outbound allow-list (data sovereignty), the active slot's
partitions, kernel modules, the kernel log, the other processes. camera-init gives the user
exactly what the services need: /data, the boot-selection environment, the inactive slot's
partitions, ports below 1024 (docs/board.md, "Privileges").
"""

from __future__ import annotations

import os
import pwd

from agent.errors import AgentError


class PrivilegeError(AgentError):
    code = "agent.privileges"


def drop_to(user: str) -> None:
    """Become ``user`` (its uid, its primary group, no supplementary groups) for good.

    Raises unless afterwards every uid and gid is the user's and root cannot be regained."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"no such user: {user!r}") from None
    uid, gid = pw.pw_uid, pw.pw_gid
    if uid == 0 or gid == 0:
        raise PrivilegeError(f"user {user!r} is privileged (uid {uid}, gid {gid})")
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups() not in ([], [gid]):
        raise PrivilegeError(f"could not become {user!r}: uids {os.getresuid()}, gids {os.getresgid()}")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("root could be regained after dropping privileges")
    # Files the services create are theirs alone unless a write says otherwise.
    os.umask(0o077)
