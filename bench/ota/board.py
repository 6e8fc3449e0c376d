"""Where the board spends an install: ``python -m bench.ota.board [--rev REV ...] [--profile]``.

Boots a clone of the dev image (console shell) under QEMU/TCG with a second, read-only virtio disk
holding a tar of the bundle, ``bench/ota/guest_phases.py`` and the installer code of each ``--rev``
(a git revision, or ``worktree``; default main and worktree), unpacks it onto /data, shows the
guest's ``top``, then times the installer's phases in the guest (read, verify, decode, the real
write path into slot B, buffered and O_DIRECT where the code has both) first with the agent
running (its synthetic camera encodes both streams in software under TCG), then with the agent
stopped (SIGSTOP), so the two costs can be told apart. Uses the dev image already built
(build/image/dev) whatever its age: the code under test travels in the tar. Prints the console
lines of interest and one JSON summary; not part of ``make bench`` (it takes 10-20 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from qemu import build_image, disk
from qemu.board import BoardRun
from qemu.vm import Guest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"


def sh(g: Guest, cmd: str, tag: str, timeout: float = 120) -> str:
    start = len(g.output)
    g.send(f"echo {tag}-B; {cmd}; echo {tag}-E\n")
    return g.wait_for(rf"(?s)\n{tag}-B\r?\n(.*?){tag}-E", timeout, start=start).group(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=BUILD / "image/release-1.1.0/update.raucb")
    ap.add_argument("--profile", action="store_true", help="cProfile the install phase")
    ap.add_argument("--rev", action="append", default=[],
                    help="installer code to time: a git revision or 'worktree' (default: main and worktree)")
    ap.add_argument("--phases", default="verify,decode,install",
                    help="guest phases: read, verify, decode, install")
    ap.add_argument("--running-phases", default="install",
                    help="phases to time while the agent (and its software encoder) runs; '' for none")
    args = ap.parse_args(argv)
    revs = args.rev or ["main", "worktree"]
    manifest = BUILD / "image/dev/manifest.json"
    # The installer code under test goes in the tar: an existing dev image is fine, whatever its age.
    dev = json.loads(manifest.read_text()) if manifest.exists() else \
        build_image.Builder(BUILD, "dev", "1.0.0-dev", 1).build_all()
    result: dict[str, object] = {"bundle": str(args.bundle), "host_load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="ota-board-", dir=BUILD) as tmp:
        t = Path(tmp)
        for rev in revs:
            dst = t / f"code-{rev}"
            dst.mkdir()
            if rev == "worktree":
                for pkg in ("agent", "bootverify"):
                    shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                arch = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "agent", "bootverify"],
                                      check=True, capture_output=True).stdout
                subprocess.run(["tar", "-x", "-C", str(dst)], input=arch, check=True)
        pack = t / "pack.tar"
        with tarfile.open(pack, "w", format=tarfile.USTAR_FORMAT) as tar:
            tar.add(args.bundle, arcname="update.raucb")
            tar.add(Path(__file__).with_name("guest_phases.py"), arcname="guest_phases.py")
            for rev in revs:
                tar.add(t / f"code-{rev}", arcname=f"code-{rev}")
        d = disk.clone(Path(str(dev["disk"])), t / "disk.img")
        extra = ("-drive", f"if=none,id=hd1,format=raw,file={pack},readonly=on",
                 "-device", "virtio-blk-pci,drive=hd1")
        g = Guest(BoardRun(bios=Path(str(dev["bios"])), disk=d, extra=extra), t / "console.log", deadline_s=3600)
        with g:
            g.wait_for(r"DEV PROFILE - console shell enabled", 300)
            g.wait_for(r"camera-agent: HTTPS listening|UNCLAIMED: use the setup code", 300)
            time.sleep(20)  # the agent's media starts after HTTPS listens, as on a camera in service
            t0 = time.monotonic()
            sh(g, "mkdir -p /data/x && tar -xf /dev/vdb -C /data/x && sync", "TAR", 900)
            result["unpack_s"] = round(time.monotonic() - t0, 1)
            print(sh(g, "top -b -n 1 | head -n 15", "TOP"), flush=True)
            opt = " --profile" if args.profile else ""
            runs = [(f"running-{rev}", rev, args.running_phases) for rev in revs if args.running_phases]
            runs.append(("stop", "", ""))
            runs += [(f"stopped-{rev}", rev, args.phases) for rev in revs]
            for name, rev, phases in runs:
                if name == "stop":
                    # SIGSTOP, not a kill: camera-init would restart a dead agent.
                    print(sh(g, "kill -STOP $(pidof camera-agent); top -b -n 1 | head -n 8", "STOP"), flush=True)
                    continue
                cmd = (f"cd /data/x && PYTHONPATH=/data/x/code-{rev} python3 guest_phases.py /data/x/update.raucb"
                       f" --phases={phases}{opt} 2>&1")
                out = sh(g, cmd, name.upper().replace("-", "_"), 3000)
                print(name, out, flush=True)
                m = re.search(r"GUEST-PHASES (\{.*\})", out)
                result[name] = json.loads(m.group(1)) if m else out[-2000:]
            result["guest_load"] = sh(g, "cat /proc/loadavg", "LOAD").strip()
    result["host_load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
