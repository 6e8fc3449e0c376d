"""Audit log benchmark: each measurement is compared against a named peer in the same run.

1. append: ``AuditLog.append`` (HMAC chain + fsync + atomic MACed head) against a plain JSON-lines
   writer with one fsync per record and no integrity (the floor any durable logger pays).
2. verify: verifying a full default-size log (8 x 1 MiB) with ``verify_directory`` against
   ``openssl dgst -sha256 -hmac`` over the same files (raw HMAC speed, no parsing, no chain); and
   opening it (``AuditLog(...)``) without a checkpoint (full verification), with the checkpoint a
   clean shutdown leaves, and with the one a crash leaves (closed segments only, the newest, almost
   full segment checked record by record).
3. forward: N records through ``AuditForwarder`` to a real rsyslogd (TLS, x509/name) until
   rsyslog has written them, against ``openssl s_client`` piping the same pre-framed bytes.

Run: .venv/bin/python -m bench.audit_bench [--records N]   (from the repository root)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.audit.checkpoint import CHECKPOINT_FILE, MODE_CHECKPOINT, MODE_FULL
from agent.audit.forward import AuditForwarder, SyslogTarget
from agent.audit.log import AuditLog
from agent.audit.rfc5424 import format_message, frame
from agent.audit.verify import list_segments, verify_directory
from agent.state import atomic_write
from tests.agentharness import free_port
from tests.audit.pki import Issued, issue, make_ca
from tests.audit.rsyslog import Rsyslog

KEY = os.urandom(32)
Waiter = Callable[[Rsyslog, int], Awaitable[None]]
DETAILS = {"role": "viewer", "reason": "bench", "n": 0}


def bench_append(root: Path, n: int) -> dict[str, float]:
    log = AuditLog(root / "audit", KEY)
    t0 = time.perf_counter()
    for i in range(n):
        log.append("auth.login", outcome="success", actor="owner", source="192.0.2.1", details={**DETAILS, "n": i})
    ours = time.perf_counter() - t0
    log.close()
    path = root / "plain.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    t0 = time.perf_counter()
    for i in range(n):
        line = json.dumps({"seq": i, "event": "auth.login", "outcome": "success", "actor": "owner",
                           "source": "192.0.2.1", "details": {**DETAILS, "n": i}}).encode() + b"\n"
        os.write(fd, line)
        os.fsync(fd)
    plain = time.perf_counter() - t0
    # Same durability as ours without the crypto: fsynced line + atomically replaced head file.
    t0 = time.perf_counter()
    for i in range(n):
        line = json.dumps({"seq": i, "event": "auth.login", "outcome": "success", "actor": "owner",
                           "source": "192.0.2.1", "details": {**DETAILS, "n": i}}).encode() + b"\n"
        os.write(fd, line)
        os.fsync(fd)
        atomic_write(root / "plain-head.json", json.dumps({"seq": i}).encode())
    plain_head = time.perf_counter() - t0
    os.close(fd)
    return {"records": n, "ours_ms_per_record": ours / n * 1000, "plain_ms_per_record": plain / n * 1000,
            "plain_with_head_ms_per_record": plain_head / n * 1000,
            "ratio_vs_plain": ours / plain, "ratio_vs_plain_with_head": ours / plain_head}


def bench_verify(root: Path) -> dict[str, float]:
    # Filled on tmpfs when there is one: the writer has no "skip fsync" mode on purpose, and
    # 8 MiB of fsynced records would dominate the run without telling anything about verifying.
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=shm if shm.is_dir() else root))
    d = base / "full"
    log = AuditLog(d, KEY)
    i = 0
    while len(list_segments(d)) < 8 or list_segments(d)[-1][1].stat().st_size < 900_000:
        log.append("stream.start", outcome="info", actor="viewer", source="192.0.2.1",
                   details={"stream": "main", "n": i, "pad": "x" * 180})
        i += 1
    # What a power cut leaves at this point: records durable, the checkpoint of the last rotation.
    crashed = base / "crashed"
    shutil.copytree(d, crashed)
    log.close()
    size = sum(p.stat().st_size for _, p in list_segments(d))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        report = verify_directory(d, KEY)
        times.append(time.perf_counter() - t0)
    assert report.clean
    t_open = []
    for _ in range(2):
        (d / CHECKPOINT_FILE).unlink(missing_ok=True)
        t0 = time.perf_counter()
        log = AuditLog(d, KEY)
        t_open.append(time.perf_counter() - t0)
        assert log.open_stats["mode"] == MODE_FULL
        log.close()
    t_clean = []
    for _ in range(3):
        t0 = time.perf_counter()
        log = AuditLog(d, KEY)
        t_clean.append(time.perf_counter() - t0)
        assert log.open_stats["mode"] == MODE_CHECKPOINT and log.open_stats["records_verified"] == 0
        log.close()
    t_crash = []
    crash_records = 0
    for n in range(3):
        copy = base / f"crashed-{n}"  # a fresh copy each time: close() checkpoints the open segment
        shutil.copytree(crashed, copy)
        t0 = time.perf_counter()
        log = AuditLog(copy, KEY)
        t_crash.append(time.perf_counter() - t0)
        assert log.open_stats["mode"] == MODE_CHECKPOINT
        crash_records = log.open_stats["records_verified"]
        log.close()
    files = [str(p) for _, p in list_segments(d)]
    peer = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(["openssl", "dgst", "-sha256", "-hmac", KEY.hex(), *files], check=True,
                       stdout=subprocess.DEVNULL)
        peer.append(time.perf_counter() - t0)
    ours, theirs = statistics.median(times), statistics.median(peer)
    shutil.rmtree(base, ignore_errors=True)
    full, clean, crash = statistics.median(t_open), statistics.median(t_clean), statistics.median(t_crash)
    return {"bytes": size, "records": report.records, "ours_s": ours, "openssl_hmac_s": theirs,
            "ours_MB_s": size / ours / 1e6, "ratio": ours / theirs,
            "open_full_s": full, "open_checkpoint_clean_s": clean, "open_checkpoint_crash_s": crash,
            "crash_records_verified": crash_records,
            "speedup_clean": full / clean, "speedup_crash": full / crash,
            "open_clean_vs_openssl_hmac": clean / theirs}


async def bench_forward(root: Path, n: int) -> dict[str, float]:
    ca = make_ca("Bench CA")
    server = issue(ca, "syslog.test", dns=("syslog.test",), ips=("127.0.0.1",))
    client = issue(ca, "camera.test", dns=("camera.test",), client=True)
    ccert, ckey = client.write(root, "client")
    (root / "ca.pem").write_bytes(ca.cert_pem)

    def count(rs: Rsyslog) -> int:
        return len(rs.lines())

    async def wait(rs: Rsyslog, want: int) -> None:
        deadline = time.monotonic() + 120
        while count(rs) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"rsyslog got {count(rs)} of {want}")
            await asyncio.sleep(0.01)

    # Ours: records are appended first (fsync cost excluded), then the forwarder is started and
    # timed until rsyslog has written every line.
    port = free_port()
    rs = Rsyslog(port, ca_pem=ca.cert_pem, cert_pem=server.cert_pem, key_pem=server.key_pem,
                 permitted_peer="camera.test")
    frames: list[bytes] = []
    try:
        ours = await _forward_ours(root, rs, ca, client, n, wait, frames)
    finally:
        rs.cleanup()
    # Peer: openssl s_client sending the same bytes over TLS to a fresh rsyslogd.
    port = free_port()
    rs = Rsyslog(port, ca_pem=ca.cert_pem, cert_pem=server.cert_pem, key_pem=server.key_pem,
                 permitted_peer="camera.test")
    try:
        theirs = await _forward_peer(root, rs, port, ccert, ckey, b"".join(frames), n, wait)
    finally:
        rs.cleanup()
    return {"records": n, "ours_s": ours, "openssl_s_client_s": theirs, "ours_records_per_s": n / ours,
            "ratio": ours / theirs}


async def _forward_ours(root: Path, rs: Rsyslog, ca: Issued, client: Issued, n: int, wait: Waiter,
                        frames: list[bytes]) -> float:
    rs.start()
    log = AuditLog(root / "fwd", KEY)
    fwd = AuditForwarder(log, SyslogTarget("127.0.0.1", rs.port, ca.cert_pem.decode(), "syslog.test"),
                         hostname="cam", queue_size=n + 10,
                         client_identity=lambda: (client.cert_pem, client.key_pem))
    fwd._loop = asyncio.get_running_loop()  # queue records without starting the sender yet
    for i in range(n):
        rec = log.append_record("stream.start", outcome="info", actor="viewer", details={"n": i})
        fwd.enqueue(rec)
        frames.append(frame(format_message(rec, "cam")))
    t0 = time.perf_counter()
    fwd._task = asyncio.create_task(fwd._run())
    try:
        await wait(rs, n)
        return time.perf_counter() - t0
    finally:
        await fwd.stop()
        log.close()


async def _forward_peer(root: Path, rs: Rsyslog, port: int, ccert: Path, ckey: Path, blob: bytes, n: int,
                        wait: Waiter) -> float:
    rs.start()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}", "-servername", "syslog.test",
        "-CAfile", str(root / "ca.pem"), "-verify_return_error", "-cert", str(ccert), "-key", str(ckey),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdin is not None
    try:
        proc.stdin.write(blob)
        await proc.stdin.drain()
        await wait(rs, n)
        return time.perf_counter() - t0
    finally:
        proc.stdin.close()
        if proc.returncode is None:
            proc.terminate()  # -quiet implies -ign_eof: s_client would hold the connection open
        await proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--only", nargs="*", choices=("append", "verify", "forward"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        root = Path(tmp)
        results: dict[str, dict[str, float]] = {}
        stages: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("append", lambda: bench_append(root, args.records)),
            ("verify", lambda: bench_verify(root)),
            ("forward", lambda: asyncio.run(bench_forward(root, args.records * 5))),
        ]
        for name, run in stages:
            if args.only and name not in args.only:
                continue
            results[name] = run()
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
