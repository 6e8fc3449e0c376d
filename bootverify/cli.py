"""camera-bootverify: the boot stage's commands on the device (and for tests on the host).

    camera-bootverify attest   --state-dir /data      write the boot attestation record
    camera-bootverify firewall --state-dir /data [--apply]   print / apply the nftables policy
    camera-bootverify boot     --state-dir /data [--factory-port N] [--agent-user U]
                               seal the OTP, attest, firewall --apply, hand /data to U
    camera-bootverify rollback --state-dir /data [--raise-to N | --raise-to-image ENV [--group G]]
                               show / raise the counter

The pure logic lives in bootverify.boot; this module only gathers files and runs nft.
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import json
import os
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bootverify.boot import attestation, facts, firewall, handover, otp, rollback, ubootenv
from bootverify.boot.errors import BootStageError
from bootverify.errors import BootVerifyError
from bootverify.fsutil import read_regular

RUN_SUBDIR = "run"
ENV_PARTITION = Path("/dev/vda1")
FIT_PARTITIONS = {"A": Path("/dev/vda2"), "B": Path("/dev/vda3")}
MAX_FIT_BYTES = 64 * 1024 * 1024
VERITY_NAME = "camera-root"


def _read(path: Path, limit: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(limit)


def _verity_status(name: str) -> str | None:
    """The kernel's own verdict: dm-verity's status line ends in V (verified) or C (corrupted)."""
    try:
        out = subprocess.run(
            ["veritysetup", "status", name], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "status":
            return value.strip() or None
    return None


def gather(state_dir: Path, *, root: Path = Path("/")) -> attestation.Evidence:
    run_dir = state_dir / RUN_SUBDIR
    problems: list[str] = []
    image = boot = None
    try:
        image = facts.image_facts(_read(run_dir / "image.env", facts.MAX_FACTS_BYTES + 1))
    except (OSError, BootVerifyError):
        problems.append("boot.image_facts_invalid")
    try:
        boot = facts.boot_facts(_read(run_dir / "boot-facts", facts.MAX_FACTS_BYTES + 1))
    except (OSError, BootVerifyError):
        problems.append("boot.boot_facts_invalid")
    try:
        slot = facts.cmdline_slot(_read(root / "proc/cmdline", 4096).decode(errors="replace"))
    except OSError:
        slot = None
    try:
        bootconf: str | None = facts.bootconf(_read(root / "proc/device-tree/chosen/u-boot,bootconf", 257))
    except (OSError, BootVerifyError):
        bootconf = None
    counter: int | None
    try:
        counter = rollback.read_counter(state_dir / "otp")
    except BootVerifyError:
        counter = None
    order = left = None
    env_dir = Path(os.environ.get("CAMERA_UBOOT_ENV_DIR", "/boot-env"))
    copies: list[bytes | None] = []
    for name in ("uboot.env", "uboot.env.redund"):
        try:
            copies.append(_read(env_dir / name, ubootenv.ENV_SIZE + 1))
        except OSError:
            copies.append(None)
    try:
        order, left = ubootenv.boot_state(ubootenv.pick_redundant(copies[0], copies[1]))
    except BootVerifyError:
        pass
    fit_sha = None
    if slot is not None and FIT_PARTITIONS[slot].exists():
        try:
            with open(FIT_PARTITIONS[slot], "rb") as fh:
                head = fh.read(40)
                total = attestation.fit_total_size(head)
                if total <= MAX_FIT_BYTES:
                    h = hashlib.sha256(head)
                    remaining = total - len(head)
                    while remaining > 0:
                        chunk = fh.read(min(remaining, 1 << 20))
                        if not chunk:
                            break
                        h.update(chunk)
                        remaining -= len(chunk)
                    fit_sha = h.hexdigest() if remaining == 0 else None
        except (OSError, ValueError):
            fit_sha = None
    return attestation.Evidence(
        image=image,
        boot=boot,
        cmdline_slot=slot,
        kernel_bootconf=bootconf,
        verity_status=_verity_status(VERITY_NAME),
        counter=counter,
        boot_order=order,
        boot_left=left,
        fit_sha256=fit_sha,
        problems=tuple(problems),
    )


def cmd_attest(args: argparse.Namespace) -> int:
    from agent.state import atomic_write_json, ensure_dir

    record = attestation.evaluate(gather(args.state_dir), now=time.time())
    run_dir = ensure_dir(args.state_dir / RUN_SUBDIR)
    atomic_write_json(run_dir / "boot-attestation.json", record)
    print(f"camera-bootverify: attestation {record['result'].upper()} slot={record['slot']} "
          f"reasons={','.join(record['reasons']) or '-'}")
    return 0 if record["result"] != attestation.RED else 2


def _settings(state_dir: Path) -> dict[str, Any]:
    path = state_dir / "data" / "settings.json"
    try:
        raw = read_regular(path, 256 * 1024 + 1)  # the agent's file, read by root
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BootStageError(f"settings.json unreadable ({exc.strerror})") from exc
    if len(raw) > 256 * 1024:
        raise BootStageError("settings.json too large")
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise BootStageError("settings.json is not an object")
    return doc


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(i[4][0]) for i in infos})


def _resolvers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    try:
        text = _read(path, 8192).decode(errors="replace")
    except OSError:
        return []
    return [ln.split()[1] for ln in text.splitlines() if ln.startswith("nameserver ") and len(ln.split()) > 1]


def cmd_firewall(args: argparse.Namespace) -> int:
    pol = firewall.policy_from_settings(_settings(args.state_dir), factory_port=args.factory_port)
    script = firewall.render(pol, _resolve, _resolvers())
    if not args.apply:
        sys.stdout.write(script)
        return 0
    subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True, timeout=30)
    print(f"camera-bootverify: firewall applied (in: {','.join(map(str, pol.listen_tcp))}; "
          f"out: {len(pol.outbound)} allowed)")
    return 0


def _account(user: str) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise BootStageError(f"no such user: {user}") from None
    return pw.pw_uid, pw.pw_gid


def _group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise BootStageError(f"no such group: {name}") from None


def cmd_boot(args: argparse.Namespace) -> int:
    """seal the OTP, attest, firewall --apply, hand /data over, in one interpreter: each Python
    start costs seconds under emulation. The attestation's verdict (also RED) is in its record
    and console line and never stops the firewall; rc is 0 only when the OTP is sealed, the
    firewall applied and /data handed over, so the caller halts otherwise."""
    owner = _account(args.agent_user) if args.agent_user else None
    if owner is not None:
        try:
            removed = otp.seal(args.state_dir / "otp", owner[1])
        except OSError as exc:
            raise BootStageError(f"simulated OTP not sealed: {exc}") from exc
        if removed:
            print(f"camera-bootverify: removed from the OTP directory: {', '.join(removed)}")
    try:
        cmd_attest(args)
    except Exception as exc:  # whatever broke the record, the firewall still goes up
        print(f"camera-bootverify: attestation failed: {exc}", file=sys.stderr)
    args.apply = True
    rc = cmd_firewall(args)
    if owner is not None:
        try:
            handover.hand_over(args.state_dir, *owner)
        except OSError as exc:
            raise BootStageError(f"{args.state_dir} not handed to {args.agent_user}: {exc}") from exc
    return rc


def cmd_rollback(args: argparse.Namespace) -> int:
    otp_dir = args.state_dir / "otp"
    group = _group(args.group) if args.group else None
    if args.raise_to_image is not None:
        # Root's answer to the agent's request after mark-good: the value comes from the running
        # image's signed facts (the initramfs's image.env, copied by init before /data was handed
        # over), never from the agent.
        try:
            raw = read_regular(args.raise_to_image, facts.MAX_FACTS_BYTES + 1)
        except OSError as exc:
            raise BootStageError(f"{args.raise_to_image} unreadable ({exc.strerror})") from exc
        target = facts.image_facts(raw).security_version
        before = rollback.read_counter(otp_dir)
        after = rollback.raise_to(otp_dir, target, group=group)
        print(f"camera-bootverify: anti-rollback counter {before} -> {after}")
    elif args.raise_to is not None:
        print(rollback.raise_to(otp_dir, args.raise_to, group=group))
    else:
        print(rollback.read_counter(otp_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="camera-bootverify", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attest", help="write the boot attestation record")
    a.add_argument("--state-dir", type=Path, required=True)
    a.set_defaults(func=cmd_attest)
    f = sub.add_parser("firewall", help="print or apply the nftables policy")
    f.add_argument("--state-dir", type=Path, required=True)
    f.add_argument("--factory-port", type=int)
    f.add_argument("--apply", action="store_true")
    f.set_defaults(func=cmd_firewall)
    b = sub.add_parser("boot", help="attest, then apply the firewall (one process for the boot path)")
    b.add_argument("--state-dir", type=Path, required=True)
    b.add_argument("--factory-port", type=int)
    b.add_argument("--agent-user", metavar="USER",
                   help="seal state-dir/otp as root's (readable by USER's group), then hand the rest to USER")
    b.set_defaults(func=cmd_boot)
    r = sub.add_parser("rollback", help="show or raise the anti-rollback counter")
    r.add_argument("--state-dir", type=Path, required=True)
    how = r.add_mutually_exclusive_group()
    how.add_argument("--raise-to", type=int)
    how.add_argument("--raise-to-image", type=Path, metavar="IMAGE_ENV",
                     help="raise to the security version in this signed image.env (the running image's)")
    r.add_argument("--group", help="write the counter readable (0640) by this group")
    r.set_defaults(func=cmd_rollback)
    args = ap.parse_args(argv)
    try:
        rc: int = args.func(args)
    except BootVerifyError as exc:
        print(f"camera-bootverify: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
