"""`make bench`: run every capability's benchmark (each compares against its named peer in the same
run and writes docs/benchmarks-<room>.md), then assemble docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (module, docs file) in the order a reader wants them.
SUITES = [
    ("bench.api", "benchmarks-api.md"),
    ("bench.rtsp", "benchmarks-rtsp.md"),
    ("bench.provisioning", "benchmarks-provisioning.md"),
    ("bench.ota", "benchmarks-ota.md"),
    ("bench.boot", "benchmarks-boot.md"),
    ("bench.media_cpu", "benchmarks-media.md"),
    ("bench.audit_bench", "benchmarks-audit.md"),
]


def main(argv: list[str]) -> int:
    assemble_only = "--assemble-only" in argv
    argv = [a for a in argv if a != "--assemble-only"]
    wanted = set() if assemble_only else (set(argv) or {m.split(".")[1] for m, _ in SUITES})
    failed = []
    for module, _doc in SUITES:
        name = module.split(".")[1]
        if name not in wanted:
            continue
        if not (ROOT / "bench" / name / "__main__.py").exists() and not (ROOT / "bench" / f"{name}.py").exists():
            print(f"== {module}: missing", flush=True)
            failed.append(module)
            continue
        print(f"== {module}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, "-m", module], cwd=ROOT)
        print(f"== {module}: exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
        if rc:
            failed.append(module)
    parts = [f"# Benchmarks\n\nAssembled by `make bench` on {dt.date.today().isoformat()} from the per-capability "
             "results below (each section names its own run date and machine load). Every benchmark runs its "
             "named peer in the same run and reports ratios.\n"]
    for _module, doc in SUITES:
        path = ROOT / "docs" / doc
        if path.exists():
            parts.append(f"\n---\n\n<!-- from docs/{doc} -->\n" + path.read_text())
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(parts))
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
