"""RTSPS fan-out benchmark: our server vs gst-rtsp-server vs the asyncio TLS floor, same input.

    .venv/bin/python -m bench.rtsp.bench_rtsp [--clients 10,50,100] [--window 15] [--out docs/benchmarks-rtsp.md]

For each server and client count N: start the server process, start reader processes (separate
processes, ``reader.py``), wait until every connection plays, then measure the server process's
CPU time over ``--window`` seconds while the readers check every RTP packet. Reports server CPU
seconds per client-minute, dropped frames (sequence gaps), time to first frame p50/p95 and
per-frame forwarding latency p99, and the ratios between servers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.rtsp.mediafile import make_file
from bench.rtsp.render import render
from bench.rtsp.serve_ours import PASSWORD, USER

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    c, k = tmp / "cert.pem", tmp / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return c, k


def start(kind: str, media: Path, cert: Path, key: Path) -> tuple[subprocess.Popen[str], int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port = free_port()
    if kind == "ours":
        cmd = [PY, "-m", "bench.rtsp.serve_ours", str(media), str(port), str(free_port())]
    elif kind == "gst":
        cmd = ["/usr/bin/python3", str(HERE / "gst_server.py"), str(media), str(port), str(cert), str(key)]
    else:
        cmd = [PY, "-m", "bench.rtsp.floor", str(media), str(port), str(cert), str(key)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != "ready":
        proc.kill()
        raise RuntimeError(f"{kind} server did not start")
    cafile = line[2] if kind == "ours" else str(cert)
    return proc, int(line[1]) if kind != "gst" else port, cafile


def run(kind: str, n: int, window: float, media: Path, cert: Path, key: Path) -> dict[str, object]:
    proc, port, cafile = start(kind, media, cert, key)
    readers: list[subprocess.Popen[str]] = []
    try:
        procs = max(1, min(4, math.ceil(n / 60)))
        per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        mode = "raw" if kind == "floor" else "rtsp"
        for count in per:
            readers.append(subprocess.Popen(
                [PY, str(HERE / "reader.py"), mode, "127.0.0.1", str(port), "main", USER, PASSWORD, cafile,
                 str(count), str(window + 2)], stdout=subprocess.PIPE, text=True, cwd=ROOT))
        for r in readers:
            assert r.stdout is not None
            if r.stdout.readline().strip() != "connected":
                break
        time.sleep(1.0)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        outs = []
        failed = 0
        for r in readers:
            out, _ = r.communicate(timeout=120)
            lines = out.strip().splitlines()
            if r.returncode != 0 or not lines or not lines[-1].startswith("{"):
                failed += 1
                continue
            outs.append(json.loads(lines[-1]))
    finally:
        for r in readers:
            if r.poll() is None:
                r.kill()
        proc.kill()
        proc.wait()
    ttff = sorted(x for o in outs for x in o["ttff"])
    lat = sorted(x for o in outs for x in o["latency"])

    def pct(xs: list[float], p: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 1) if xs else None

    minutes = (t1 - t0) / 60
    connected = sum(o["connections"] for o in outs)
    return {
        "server": kind, "clients": n, "connected": connected,
        "errors": sum(o["error_count"] for o in outs), "closed": sum(o["closed"] for o in outs),
        "cpu_s": round(c1 - c0, 3), "window_s": round(t1 - t0, 2),
        "cpu_ms_per_client_min": round((c1 - c0) / max(connected, 1) / minutes * 1000, 1),
        "server_cores": round((c1 - c0) / (t1 - t0), 3),
        "mbit_per_client": round(sum(o["window_bytes"] / o["window_s"] for o in outs) * 8 / max(connected, 1) / 1e6,
                                 2),
        "reader_processes_failed": failed,
        "gaps": sum(o["gaps"] for o in outs), "frames": sum(o["frames"] for o in outs),
        "ttff_p50_ms": pct(ttff, 0.5), "ttff_p95_ms": pct(ttff, 0.95),
        "latency_p50_ms": pct(lat, 0.5), "latency_p99_ms": pct(lat, 0.99),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="10,50,100,200")
    ap.add_argument("--window", type=float, default=15.0)
    ap.add_argument("--seconds", type=int, default=60, help="length of the encoded input")
    ap.add_argument("--servers", default="ours,gst,floor")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "benchmarks-rtsp.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rtsp-bench-"))
    t = time.monotonic()
    media = make_file(tmp / "input.mov", args.seconds)
    print(f"encoded {args.seconds}s 1080p30 input in {time.monotonic() - t:.1f}s", flush=True)
    cert, key = self_signed(tmp)
    rows = []
    for n in [int(x) for x in args.clients.split(",")]:
        for kind in args.servers.split(","):
            row = run(kind, n, args.window, media, cert, key)
            print(json.dumps(row), flush=True)
            rows.append(row)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"load average during the run: {os.getloadavg()}")
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
