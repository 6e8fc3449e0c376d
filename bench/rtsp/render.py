"""Markdown table and ratios from the benchmark's JSON rows (``bench_rtsp.py --out``)."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = [("server", "server"), ("clients", "N"), ("connected", "playing"), ("closed", "cut off"),
           ("gaps", "lost pkts"), ("ts_backwards", "ts back"),
           ("cpu_ms_per_client_min", "CPU ms/client-min"), ("server_cores", "server cores"),
           ("reader_cores", "reader cores"),
           ("mbit_per_client", "Mbit/s/client"),
           ("mb_per_cpu_s", "MB per CPU-s"), ("ttff_p50_ms", "TTFF p50 ms"), ("ttff_p95_ms", "TTFF p95 ms"),
           ("latency_p50_ms", "latency p50 ms"), ("latency_p99_ms", "latency p99 ms"), ("load_1min", "load")]


def mb_per_cpu_s(r: dict[str, Any]) -> float | None:
    """Bytes the readers received per second of server CPU: the cost per client-minute alone
    flatters a server that falls behind and sends less."""
    if not r.get("server_cores") or not r.get("mbit_per_client") or not r.get("connected"):
        return None
    return round(float(r["mbit_per_client"]) * int(r["connected"]) / 8 / float(r["server_cores"]), 1)


def render(rows: list[dict[str, Any]]) -> str:
    rows = [{**r, "mb_per_cpu_s": mb_per_cpu_s(r)} for r in rows]
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r.get(k) is None else str(r[k]) for k, _ in COLUMNS) + " |")
    by = {(r["server"], r["clients"]): r for r in rows}
    lines += ["", "| N | ours / gst-rtsp-server (CPU per client-min) | ours / floor (CPU per client-min) "
              "| ours / gst (CPU per byte delivered) | ours / floor (CPU per byte delivered) |",
              "|---|---|---|---|---|"]
    for n in sorted({r["clients"] for r in rows}):
        ours, gst, floor = by.get(("ours", n)), by.get(("gst", n)), by.get(("floor", n))
        if ours is None:
            continue

        def ratio(other: dict[str, Any] | None, ours: dict[str, Any] = ours) -> str:
            if other is None or not other["cpu_ms_per_client_min"]:
                return "-"
            return f"{ours['cpu_ms_per_client_min'] / other['cpu_ms_per_client_min']:.2f}"

        def per_byte(other: dict[str, Any] | None, ours: dict[str, Any] = ours) -> str:
            if other is None or not other["mb_per_cpu_s"] or not ours["mb_per_cpu_s"]:
                return "-"
            return f"{other['mb_per_cpu_s'] / ours['mb_per_cpu_s']:.2f}"

        lines.append(f"| {n} | {ratio(gst)} | {ratio(floor)} | {per_byte(gst)} | {per_byte(floor)} |")
    lines += ["", marginal(rows)]
    return "\n".join(lines) + "\n"


def marginal(rows: list[dict[str, Any]]) -> str:
    """CPU per added client between consecutive N (slope of server cores over N, in ms per
    client-minute): the fixed costs (ours: the in-process demux and pump; gst: its pipeline) drop
    out, which per-client averages at small N do not show."""
    servers = [s for s in ("ours", "gst", "floor") if any(r["server"] == s for r in rows)]
    head = " | ".join(f"{s} ms/added client-min" for s in servers)
    lines = [f"| N from -> to | {head} | ours / gst | ours / floor |", "|" + "---|" * (len(servers) + 3)]
    ns = sorted({r["clients"] for r in rows})
    by = {(r["server"], r["clients"]): r for r in rows}
    for a, b in itertools.pairwise(ns):
        vals: dict[str, float | None] = {}
        for s in servers:
            ra, rb = by.get((s, a)), by.get((s, b))
            ok = (ra and rb and ra.get("server_cores") and rb.get("server_cores")
                  and ra["connected"] == a and rb["connected"] == b)
            vals[s] = (rb["server_cores"] - ra["server_cores"]) / (b - a) * 60_000 if ok else None  # type: ignore[index]

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        def rat(x: float | None, y: float | None) -> str:
            return "-" if x is None or y is None or y <= 0 else f"{x / y:.2f}"

        lines.append(f"| {a} -> {b} | " + " | ".join(fmt(vals[s]) for s in servers)
                     + f" | {rat(vals.get('ours'), vals.get('gst'))} | {rat(vals.get('ours'), vals.get('floor'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
