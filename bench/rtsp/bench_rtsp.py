"""RTSPS fan-out benchmark: our server vs gst-rtsp-server vs the asyncio TLS floor, same input.

    .venv/bin/python -m bench.rtsp.bench_rtsp [--clients 10,50,100] [--window 20] [--doc docs/benchmarks-rtsp.md]

For each server and client count N: start the server process, start the C reader (``reader.c``,
compiled for the run; one process, epoll, every connection checked packet by packet), wait until
every connection plays, then measure the server process's CPU time over ``--window`` seconds.
Reports server CPU per client-minute, lost packets (sequence gaps), time to first frame p50/p95,
per-frame forwarding latency p50/p99, and the ratios between servers. The table replaces the
results section of ``--doc`` (between its ``results:begin``/``results:end`` markers).
"""

from __future__ import annotations

import argparse
import datetime
import json
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


def build_reader(out_dir: Path) -> Path:
    """Compile the C reader (gcc + OpenSSL 3, deps/apt-rtsp.txt) for this run."""
    exe = out_dir / "reader"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wno-format-truncation", "-o", str(exe), str(HERE / "reader.c"),
                    "-lssl", "-lcrypto", "-lm"], check=True)
    return exe


def sample_decode(kind: str, port: int, seconds: float = 3.0) -> str:
    """A real decoder samples one more session after the window (its CPU is not in the
    measurement): FFmpeg over rtsps:// decodes video and audio for a few seconds and counts the
    frames it decoded, and any decoder error shows here."""
    cred = f"{USER}:{PASSWORD}@" if kind == "ours" else ""
    try:
        r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-rtsp_transport", "tcp", "-i",
                            f"rtsps://{cred}127.0.0.1:{port}/main", "-t", str(seconds), "-map", "0", "-f", "framecrc",
                            "-"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ffmpeg failed: {exc.__class__.__name__}"
    rows = [ln.split(",")[0].strip() for ln in r.stdout.splitlines() if ln and not ln.startswith("#")]
    errors = len(r.stderr.strip().splitlines())
    return f"{rows.count('0')} video + {rows.count('1')} audio frames, {errors} error lines, exit {r.returncode}"


def run(kind: str, n: int, window: float, media: Path, cert: Path, key: Path, reader: Path,
        rate: float) -> dict[str, object]:
    proc, port, cafile = start(kind, media, cert, key)
    mode = "raw" if kind == "floor" else "rtsp"
    rd = subprocess.Popen([str(reader), mode, "127.0.0.1", str(port), "main", USER, PASSWORD, cafile, str(n),
                           str(window + 2), str(rate)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    load0 = os.getloadavg()[0]
    try:
        assert rd.stdout is not None
        ramp0 = time.monotonic()
        connected = rd.stdout.readline().strip() == "connected"
        ramp = time.monotonic() - ramp0
        time.sleep(1.0)
        c0, r0, t0 = cpu_seconds(proc.pid), cpu_seconds(rd.pid), time.monotonic()
        time.sleep(window)
        c1, r1, t1 = cpu_seconds(proc.pid), cpu_seconds(rd.pid), time.monotonic()
        decoded = sample_decode(kind, port) if kind != "floor" else None
        out, _ = rd.communicate(timeout=120)
        lines = out.strip().splitlines()
        ok = connected and rd.returncode == 0 and lines and lines[-1].startswith("{")
        res = json.loads(lines[-1]) if ok else None
    finally:
        if rd.poll() is None:
            rd.kill()
        proc.kill()
        proc.wait()
    if res is None:
        return {"server": kind, "clients": n, "connected": 0, "errors": -1, "reader_failed": True}
    ttff = sorted(res["ttff"])

    def pct(xs: list[float], p: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 1) if xs else None

    minutes = (t1 - t0) / 60
    playing = res["connections"]
    if kind == "floor":
        # a replay joined mid-stream with no GOP start, and its RTP numbering restarts with each
        # pass over the file: only its CPU cost and throughput mean something
        ttff = []
        res.update(gaps=None, ts_backwards=None, latency_samples=0)
    return {
        "server": kind, "clients": n, "connected": playing, "playing_at_end": res["playing_at_end"],
        "ffmpeg_sample": decoded,
        "errors": res["error_count"], "error_samples": res["errors"], "closed": res["closed"],
        "ramp_s": round(ramp, 1), "load_1min": round((load0 + os.getloadavg()[0]) / 2, 1),
        "cpu_s": round(c1 - c0, 3), "window_s": round(t1 - t0, 2),
        "cpu_ms_per_client_min": round((c1 - c0) / max(playing, 1) / minutes * 1000, 1),
        "server_cores": round((c1 - c0) / (t1 - t0), 3), "reader_cores": round((r1 - r0) / (t1 - t0), 3),
        "mbit_per_client": round(res["window_bytes"] / res["window_s"] * 8 / max(playing, 1) / 1e6, 2),
        "gaps": res["gaps"], "ts_backwards": res["ts_backwards"], "frames": res["frames"],
        "ttff_p50_ms": pct(ttff, 0.5), "ttff_p95_ms": pct(ttff, 0.95),
        "latency_p50_ms": res["latency_p50_ms"] if res["latency_samples"] else None,
        "latency_p99_ms": res["latency_p99_ms"] if res["latency_samples"] else None,
    }


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def write_results(doc: Path, rows: list[dict[str, object]], table: str, args: argparse.Namespace) -> None:
    """Replace the generated part of the benchmark doc; the method and the reading stay as written."""
    if not doc.exists() or BEGIN not in (text := doc.read_text()) or END not in text:
        print(f"{doc}: no {BEGIN} marker, results not written", file=sys.stderr)
        return
    loads = [float(str(r["load_1min"])) for r in rows if r.get("load_1min") is not None]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"Generated by `python -m bench.rtsp`, run finished {stamp}: {args.window:g} s measured per point, readers "
            f"connecting {args.rate:g}/s, {os.cpu_count()} cores, 1-minute load average "
            f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} during the points.\n\n")
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    doc.write_text(f"{before}{BEGIN}\n{head}{table}{END}{after}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="10,50,100,200,300,500")
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured per point")
    # gst-rtsp-server plays the file once (ours and the floor loop it): long enough for its slowest
    # ramp (about 100 s for 500 clients here) plus the window
    ap.add_argument("--seconds", type=int, default=150, help="length of the encoded input")
    ap.add_argument("--rate", type=float, default=50.0, help="reader connects per second (staggered)")
    ap.add_argument("--servers", default="ours,gst,floor")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "benchmarks-rtsp.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks-rtsp.md"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rtsp-bench-"))
    t = time.monotonic()
    media = make_file(tmp / "input.mov", args.seconds)
    print(f"encoded {args.seconds}s 1080p30 input in {time.monotonic() - t:.1f}s", flush=True)
    cert, key = self_signed(tmp)
    reader = build_reader(tmp)
    rows = []
    for n in [int(x) for x in args.clients.split(",")]:
        for kind in args.servers.split(","):
            row = run(kind, n, args.window, media, cert, key, reader, args.rate)
            print(json.dumps(row), flush=True)
            rows.append(row)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    table = render(rows)
    print(table)
    write_results(Path(args.doc), rows, table, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
