"""The agent's pre-listener imports timed inside the guest, warm and cold, for one or more images.

Boots each dev image (console shell), waits until the agent announced itself, stops it with
SIGSTOP (so it takes no CPU), then runs in a fresh ``python3 -I`` what the agent imports before
HTTPS listens - ``agent.cli`` with its command groups, ``agent.runtime``, the capabilities'
``preload()`` and ``agent.bootgate`` - timed with ``time.perf_counter()`` in the guest, and counts
``sys.modules``. "warm": page cache as the previous run left it (the first warm run is dropped);
"cold": ``echo 3 > /proc/sys/vm/drop_caches`` before each run, as at boot. Images are measured one
after the other, in rounds, so that host load drifts hit each of them.

Usage: python -m bench.boot.guest_imports --image NAME=DIR [--image NAME=DIR ...] [--rounds 2]
       [--warm 3] [--cold 2]        (DIR: a build's image directory with manifest.json, e.g.
                                     build/image/dev)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from qemu import disk
from qemu.board import BoardRun
from qemu.vm import Guest

PROBE = ("import time, sys; t = time.perf_counter(); import agent.cli, agent.runtime, agent.capabilities as c; "
         "agent.cli.build_parser(); c.preload(); import agent.bootgate; "
         "print('PROBE', round(time.perf_counter() - t, 3), len(sys.modules), "
         "len([m for m in sys.modules if m.startswith('agent.')]))")
# aiohttp.web with and without the package's __init__ (which always imports the client side):
# the server-only variant seeds the package module unexecuted, with the one name aiohttp.http
# takes from it (__version__), to measure what a server-only import would save.
AIOHTTP = {
    "full": "import time, sys; t = time.perf_counter(); import aiohttp.web; "
            "print('PROBE', round(time.perf_counter() - t, 3), len(sys.modules), 0)",
    "server_only": "import time, sys, importlib.util as u; t = time.perf_counter(); s = u.find_spec('aiohttp'); "
                   "m = u.module_from_spec(s); m.__version__ = '0'; sys.modules['aiohttp'] = m; import aiohttp.web; "
                   "print('PROBE', round(time.perf_counter() - t, 3), len(sys.modules), 0)",
}
STOP_AGENT = ("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q 'camera-agent run' "
              "&& kill -STOP ${p#/proc/} && echo stopped ${p#/proc/}; done")


def sh(g: Guest, cmd: str, tag: str, timeout: float = 300) -> str:
    start = len(g.output)
    g.send(f"echo {tag}-B; {cmd}; echo {tag}-E\n")
    return g.wait_for(rf"(?s)\n{tag}-B\r?\n(.*?){tag}-E", timeout, start=start).group(1)


def probe(g: Guest, tag: str, *, cold: bool, code: str = PROBE) -> dict[str, float]:
    prefix = "sync; echo 3 > /proc/sys/vm/drop_caches; " if cold else ""
    out = sh(g, f"{prefix}python3 -I -c \"{code}\"", tag)
    m = re.search(r"PROBE (\S+) (\d+) (\d+)", out)
    if m is None:
        raise RuntimeError(f"probe failed: {out[-2000:]}")
    return {"seconds": float(m.group(1)), "modules": int(m.group(2)), "agent_modules": int(m.group(3))}


def measure(image_dir: Path, work: Path, name: str, warm: int, cold: int,
            aiohttp_runs: int) -> dict[str, list[dict[str, float]]]:
    manifest = json.loads((image_dir / "manifest.json").read_text())
    d = disk.clone(Path(manifest["disk"]), work / f"{name}.img")
    g = Guest(BoardRun(bios=Path(manifest["bios"]), disk=d), work / f"{name}.log", deadline_s=1200)
    with g:
        g.wait_for(r"DEV PROFILE - console shell enabled", 300)
        g.wait_for(r"camera-agent: serial", 300)
        if "stopped" not in sh(g, STOP_AGENT, "STOP"):
            raise RuntimeError("agent process not found")
        res: dict[str, list[dict[str, float]]] = {"warm": [], "cold": [], **{k: [] for k in AIOHTTP}}
        for i in range(warm + 1):
            r = probe(g, f"W{i}", cold=False)
            if i:  # the first run warms the cache
                res["warm"].append(r)
        for i in range(cold):
            res["cold"].append(probe(g, f"C{i}", cold=True))
        for i in range(aiohttp_runs):  # warm, alternating
            for k, code in AIOHTTP.items():
                res[k].append(probe(g, f"A{k[0]}{i}", cold=False, code=code))
    d.unlink()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", action="append", required=True, help="NAME=DIR (image directory)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--cold", type=int, default=2)
    ap.add_argument("--aiohttp", type=int, default=0, help="runs of the aiohttp.web full / server-only probe")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    images = [(n, Path(p).resolve()) for n, _, p in (s.partition("=") for s in args.image)]
    kinds = ("warm", "cold", *AIOHTTP)
    results: dict[str, dict[str, list[dict[str, float]]]] = {n: {k: [] for k in kinds} for n, _ in images}
    loads: list[str] = [Path("/proc/loadavg").read_text().split()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for name, image_dir in images:
                r = measure(image_dir, Path(tmp), f"{name}{rnd}", args.warm, args.cold, args.aiohttp)
                for k in kinds:
                    results[name][k] += r[k]
                loads.append(Path("/proc/loadavg").read_text().split()[0])
                print(name, rnd, json.dumps(r), "load", loads[-1], flush=True)
    summary = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host_loadavg_1m": loads,
               "results": results}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    for name, r in results.items():
        for k in kinds:
            s = [x["seconds"] for x in r[k]]
            if s:
                print(f"{name} {k}: median {statistics.median(s):.2f} s, runs "
                      f"{' / '.join(f'{x:.2f}' for x in s)}; modules {r[k][0]['modules']} "
                      f"(agent.* {r[k][0]['agent_modules']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
