"""Markdown table and ratios from the benchmark's JSON rows (``bench_rtsp.py --out``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = [("server", "server"), ("clients", "N"), ("connected", "playing"), ("closed", "cut off"),
           ("gaps", "lost pkts"), ("ts_backwards", "ts back"),
           ("cpu_ms_per_client_min", "CPU ms/client-min"), ("server_cores", "server cores"),
           ("reader_cores", "reader cores"),
           ("mbit_per_client", "Mbit/s/client"), ("ttff_p50_ms", "TTFF p50 ms"), ("ttff_p95_ms", "TTFF p95 ms"),
           ("latency_p50_ms", "latency p50 ms"), ("latency_p99_ms", "latency p99 ms"), ("load_1min", "load")]


def render(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r.get(k) is None else str(r[k]) for k, _ in COLUMNS) + " |")
    by = {(r["server"], r["clients"]): r for r in rows}
    lines += ["", "| N | ours / gst-rtsp-server (CPU) | ours / floor (CPU) |", "|---|---|---|"]
    for n in sorted({r["clients"] for r in rows}):
        ours, gst, floor = by.get(("ours", n)), by.get(("gst", n)), by.get(("floor", n))
        if ours is None:
            continue

        def ratio(other: dict[str, Any] | None, ours: dict[str, Any] = ours) -> str:
            if other is None or not other["cpu_ms_per_client_min"]:
                return "-"
            return f"{ours['cpu_ms_per_client_min'] / other['cpu_ms_per_client_min']:.2f}"

        lines.append(f"| {n} | {ratio(gst)} | {ratio(floor)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
