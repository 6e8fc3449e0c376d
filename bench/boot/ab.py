"""A/B of two built release images' boot to agent-ready, booted alternately in one run - or of one
image on two QEMU CPU models (``--cpu``).

Each boot is a fresh copy of the image's disk (a first boot), timed as bench/boot/boot_time.py
does (console marks, first TLS handshake through the forwarded port). Alternating spreads the
shared host's load drifts over both sides; the per-boot spread is printed with the medians.

Usage: python -m bench.boot.ab --image NAME=DIR --image NAME=DIR [--runs 4] [--out FILE]
       [--cpu NAME=MODEL ...]
       (DIR: an image directory with manifest.json, e.g. build/image/release; MODEL: a QEMU -cpu
       value for image NAME instead of the board's, e.g. --image a57=build/image/release
       --image board=build/image/release --cpu a57=cortex-a57)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.boot.boot_time import one_boot
from qemu import disk
from qemu.board import CPU

KEYS = ("rootfs", "agent_loaded", "bootstage", "listening", "ready", "total")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", action="append", required=True, help="NAME=DIR (image directory)")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cpu", action="append", default=[], help="NAME=MODEL (QEMU -cpu for image NAME)")
    args = ap.parse_args(argv)
    cpus = {n: model for n, _, model in (s.partition("=") for s in args.cpu)}
    images = [(n, json.loads((Path(p) / "manifest.json").read_text()))
              for n, _, p in (s.partition("=") for s in args.image)]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n, _ in images}
    loads = [Path("/proc/loadavg").read_text().split()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for name, m in images:
                d = disk.clone(Path(m["disk"]), Path(tmp) / f"{name}{i}.img")
                r = one_boot(Path(m["bios"]), d, Path(tmp) / f"{name}{i}.log", stock=False,
                             cpu=cpus.get(name, CPU))
                d.unlink()
                runs[name].append(r)
                loads.append(Path("/proc/loadavg").read_text().split()[0])
                print(f"{name} run {i}: " + ", ".join(f"{k} {r[k]:.1f}" for k in KEYS) + f"; load {loads[-1]}",
                      flush=True)
    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host_loadavg_1m": loads,
              "cpus": {n: cpus.get(n, CPU) for n, _ in images}, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in KEYS}
        totals = sorted(r["total"] for r in rs)
        print(f"{name}: median " + ", ".join(f"{k} {med[k]:.1f}" for k in KEYS)
              + f"; totals {' / '.join(f'{t:.1f}' for t in totals)} (spread {totals[-1] - totals[0]:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
