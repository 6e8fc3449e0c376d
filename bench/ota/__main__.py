"""OTA benchmark (``make bench`` / ``python -m bench.ota [--quick]``), peers in the same run:

- install throughput of a verity bundle into a file-backed slot vs ``dd bs=1M conv=fsync`` of the
  same image to the same kind of target (a file on the same filesystem);
- peak RSS of the installing process for 256 MiB and 1 GiB bundles (must stay flat);
- signature check time: our in-process ``open_bundle`` and ``camera-ota info`` (a process, like
  rauc) next to ``rauc info --keyring`` on the same bundle.

Results go to docs/benchmarks-ota.md. Keys are generated per run in a temp dir.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
WORKER = r"""
import json, resource, sys, time
from pathlib import Path
from agent.config import build_config
from agent.ota.config import build_installer
from agent.state import StateDir
state, keyring, bundle = (Path(a) for a in sys.argv[1:4])
st = StateDir.open(state)
cfg = build_config(st.root, {"ota": {"keyring": str(keyring)}, "device": {"model": "RC-1000"}})
inst = build_installer(cfg, st, lambda e, o, d: None)
def schedstat():
    # (ns on CPU, ns runnable but waiting for a CPU) of the main thread
    run, wait, _ = open("/proc/self/schedstat").read().split()
    return int(run) / 1e9, int(wait) / 1e9
ru0 = resource.getrusage(resource.RUSAGE_SELF)
ss0 = schedstat()
rss0 = ru0.ru_maxrss
t0 = time.perf_counter()
res = inst.install(bundle)
elapsed = time.perf_counter() - t0
ru1 = resource.getrusage(resource.RUSAGE_SELF)
ss1 = schedstat()
cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
print(json.dumps({"elapsed": elapsed, "cpu": cpu, "runq_wait": ss1[1] - ss0[1],
                  "bytes": res.bytes_written, "rss_before_kib": rss0,
                  "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
SIG_WORKER = r"""
import datetime as dt, json, os, sys, time
from pathlib import Path
from bootverify.bundle.bundle import open_bundle
from bootverify.bundle.cms import Keyring
keyring, bundle = Path(sys.argv[1]), Path(sys.argv[2])
kr = Keyring.from_pem(keyring.read_bytes())
fd = os.open(bundle, os.O_RDONLY)
size = os.fstat(fd).st_size
times = []
for _ in range(20):
    t0 = time.perf_counter()
    open_bundle(lambda o, n: os.pread(fd, n, o), size, kr, dt.datetime.now(dt.UTC))
    times.append(time.perf_counter() - t0)
print(json.dumps({"median": sorted(times)[len(times) // 2]}))
"""


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)


def make_image(path: Path, size: int) -> None:
    """Firmware-like content: two thirds incompressible, one third zero blocks."""
    with open(path, "wb") as fh:
        written = 0
        while written < size:
            chunk = os.urandom(2 * MIB) + bytes(MIB)
            chunk = chunk[: size - written]
            fh.write(chunk)
            written += len(chunk)


def _read_through(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(8 * MIB):
            pass


def drop_target(path: Path) -> None:
    path.unlink(missing_ok=True)


def bench_size(tmp: Path, pki: Path, size_mib: int, repeats: int) -> dict[str, Any]:
    image = tmp / f"img{size_mib}"
    make_image(image, size_mib * MIB)
    bundle = tmp / f"b{size_mib}.raucb"
    t0 = time.perf_counter()
    run([sys.executable, "-m", "bootverify.release.cli", "bundle", "--pki", str(pki), "--compatible", "RC-1000",
         "--version", "2.0.0", "--security-version", "1", "--image", f"rootfs={image}", "-o", str(bundle)])
    build_s = time.perf_counter() - t0
    keyring = pki / "root.pem"
    ours, dds, rss, cpu, waits = [], [], [], [], []
    # Warm the page cache with both inputs, then start every timed run from a clean writeback
    # state (sync), alternating which peer goes first.
    for f in (image, bundle):
        _read_through(f)
    for i in range(repeats):
        for peer in (("ours", "dd") if i % 2 == 0 else ("dd", "ours")):
            os.sync()
            if peer == "ours":
                state = tmp / f"state{size_mib}-{i}"
                out = json.loads(run([sys.executable, "-c", WORKER, str(state), str(keyring), str(bundle)]).stdout)
                ours.append(out["elapsed"])
                cpu.append(out["cpu"])
                waits.append(out["runq_wait"])
                rss.append(out["rss_peak_kib"] / 1024)
                shutil.rmtree(state)
            else:
                target = tmp / "dd-target"
                t0 = time.perf_counter()
                run(["dd", f"if={image}", f"of={target}", "bs=1M", "conv=fsync"])
                dds.append(time.perf_counter() - t0)
                drop_target(target)
    sig = json.loads(run([sys.executable, "-c", SIG_WORKER, str(keyring), str(bundle)]).stdout)["median"]
    cli_t, rauc_t = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        run([sys.executable, "-m", "bootverify.release.cli", "info", "--keyring", str(keyring), str(bundle)])
        cli_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run(["rauc", "info", "--keyring", str(keyring), str(bundle)])
        rauc_t.append(time.perf_counter() - t0)
    ours_m, dd_m = statistics.median(ours), statistics.median(dds)
    res = {
        "size_mib": size_mib,
        "bundle_bytes": bundle.stat().st_size,
        "build_s": build_s,
        "install_s": ours_m,
        "dd_s": dd_m,
        "install_mib_s": size_mib / ours_m,
        "dd_mib_s": size_mib / dd_m,
        "ratio": dd_m / ours_m,
        "peak_rss_mib": max(rss),
        "install_cpu_s": statistics.median(cpu),
        "install_runq_wait_s": statistics.median(waits),
        "sig_inprocess_ms": sig * 1000,
        "cli_info_ms": statistics.median(cli_t) * 1000,
        "rauc_info_ms": statistics.median(rauc_t) * 1000,
    }
    image.unlink()
    bundle.unlink()
    return res


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    sizes = [64] if quick else [256, 1024]
    repeats = 1 if quick else 3
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ota-", dir=os.environ.get("BENCH_TMP")) as t:
        tmp = Path(t)
        run([sys.executable, "-m", "bootverify.release.cli", "pki", "init", "--dir", str(tmp / "pki")])
        for size in sizes:
            r = bench_size(tmp, tmp / "pki", size, repeats)
            print(json.dumps(r), flush=True)
            results.append(r)
    lines = [
        "# OTA benchmarks",
        "",
        f"Measured {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, by `python -m bench.ota`"
        f"{' --quick' if quick else ''}. Medians of {repeats} runs; peers in the same run.",
        "",
        "Every timed run starts after `sync` with both inputs in the page cache; the peers alternate.",
        "Install = signature check + policy + streaming verified write of the image into a file-backed",
        "slot + fsync + boot-state update (in-process timing). Peer: `dd bs=1M conv=fsync` of the same",
        "image to a file on the same filesystem. Ratio = dd time / install time (target >= 0.9).",
        "'Waiting for a CPU' is the installer main thread's run-queue time from /proc/self/schedstat: on",
        "a shared machine it shows how much of the install time was other processes' load.",
        "",
        "| image | install | dd | ratio | installer CPU (user+sys) | main thread waiting for a CPU | "
        "peak RSS of installer | bundle build |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['size_mib']} MiB | {r['install_s']:.2f} s ({r['install_mib_s']:.0f} MiB/s) | "
                     f"{r['dd_s']:.2f} s ({r['dd_mib_s']:.0f} MiB/s) | {r['ratio']:.2f} | {r['install_cpu_s']:.2f} s | "
                     f"{r['install_runq_wait_s']:.2f} s | "
                     f"{r['peak_rss_mib']:.1f} MiB | {r['build_s']:.1f} s |")
    lines += [
        "",
        "Signature check (CMS chain + CRL + manifest + layout; no payload read):",
        "",
        "| image | ours in-process | `camera-ota info` (process) | `rauc info --keyring` (process) |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['size_mib']} MiB | {r['sig_inprocess_ms']:.2f} ms | {r['cli_info_ms']:.0f} ms | "
                     f"{r['rauc_info_ms']:.0f} ms |")
    lines += ["", f"Machine load average when the run ended: {os.getloadavg()[0]:.1f} (shared machine: other",
              "benchmarks and tests may run at the same time; the installer is CPU-bound, dd is I/O-bound, so load",
              "lowers our ratio more than dd's).", ""]
    (ROOT / "docs" / "benchmarks-ota.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
