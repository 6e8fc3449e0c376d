"""Where the board spends an install: ``python -m bench.ota.board [--bundle B] [--profile]``.

Boots a clone of the dev image (console shell) under QEMU/TCG with a second, read-only virtio disk
holding a tar of the bundle and ``bench/ota/guest_phases.py``, unpacks it onto /data, shows the
guest's ``top``, then times the installer's phases in the guest (read, verify, decode, the real
write path into slot B) twice: with the agent running (its synthetic camera encodes both streams
in software under TCG) and with the agent stopped (SIGSTOP), so the two costs can be told apart.
Prints the console lines of interest and one JSON summary; not part of ``make bench`` (minutes).
"""

from __future__ import annotations

import argparse
import json
import re
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
    ap.add_argument("--no-stop", action="store_true", help="only measure with the agent running")
    ap.add_argument("--code", action="store_true",
                    help="also run this worktree's agent/ and bootverify/ (PYTHONPATH) after the firmware's")
    ap.add_argument("--quick", action="store_true", help="skip the decode-only phase")
    args = ap.parse_args(argv)
    dev = build_image.Builder(BUILD, "dev", "1.0.0-dev", 1).build_all()
    result: dict[str, object] = {"bundle": str(args.bundle)}
    with tempfile.TemporaryDirectory(prefix="ota-board-", dir=BUILD) as tmp:
        t = Path(tmp)
        pack = t / "pack.tar"
        with tarfile.open(pack, "w", format=tarfile.USTAR_FORMAT) as tar:
            tar.add(args.bundle, arcname="update.raucb")
            tar.add(Path(__file__).with_name("guest_phases.py"), arcname="guest_phases.py")
            if args.code:
                # This worktree's installer next to the firmware's own, to compare both in one boot.
                for pkg in ("agent", "bootverify"):
                    tar.add(ROOT / pkg, arcname=f"code/{pkg}",
                            filter=lambda ti: None if "__pycache__" in ti.name else ti)
        d = disk.clone(Path(str(dev["disk"])), t / "disk.img")
        extra = ("-drive", f"if=none,id=hd1,format=raw,file={pack},readonly=on",
                 "-device", "virtio-blk-pci,drive=hd1")
        g = Guest(BoardRun(bios=Path(str(dev["bios"])), disk=d, extra=extra), t / "console.log", deadline_s=3600)
        with g:
            g.wait_for(r"DEV PROFILE - console shell enabled", 300)
            g.wait_for(r"camera-init: agent started", 300)
            g.wait_for(r"camera-agent: HTTPS listening", 300)
            time.sleep(20)  # let the agent's media start, as on a camera in service
            t0 = time.monotonic()
            sh(g, "mkdir -p /data/x && tar -xf /dev/vdb -C /data/x && sync", "TAR", 900)
            result["unpack_s"] = round(time.monotonic() - t0, 1)
            print(sh(g, "top -b -n 1 | head -n 15", "TOP"), flush=True)
            opt = (" --profile" if args.profile else "") + (" --quick" if args.quick else "")
            stop = "kill -STOP $(pidof camera-agent) ; "
            runs = [("agent_running", "", "")]
            if args.code:
                runs.append(("agent_running_new_code", "", "PYTHONPATH=/data/x/code "))
            if not args.no_stop:
                runs.append(("agent_stopped", stop, ""))
                if args.code:
                    runs.append(("agent_stopped_new_code", stop, "PYTHONPATH=/data/x/code "))
            for name, pre, env in runs:
                out = sh(g, f"{pre}cd /data/x && {env}python3 guest_phases.py /data/x/update.raucb{opt} 2>&1",
                         name.upper(), 3000)
                print(out, flush=True)
                m = re.search(r"GUEST-PHASES (\{.*\})", out)
                result[name] = json.loads(m.group(1)) if m else out[-2000:]
            result["uptime"] = sh(g, "cat /proc/loadavg", "LOAD").strip()
    result["host_load"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
