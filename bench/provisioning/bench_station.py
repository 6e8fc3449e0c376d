"""Station time per device: file CA key vs SoftHSM2, against `openssl x509 -req` as the peer.

    .venv/bin/python -m bench.provisioning.bench_station [--devices 40]

Devices run in a separate process (device_farm.py), so the CPU time of this process is the
station's: mutual TLS, checks, two certificates, the database (SQLite, fsync on), the label
(PNG + PDF), lock confirmation. The peer is the OpenSSL command line issuing the same two
certificates from the same CSRs with the same issuing key - what a shell-script station does.
Results go to stdout as JSON and, with --write, into docs/benchmarks-provisioning.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.auth.claim import generate_setup_code
from agent.factory import protocol as p
from provisioning import certs, label, pki
from provisioning.db import SqliteRepository
from provisioning.station import Job, Station

ROOT = Path(__file__).resolve().parents[2]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _per_call(fn: Callable[[], object], n: int) -> tuple[float, float]:
    fn()
    c0, w0 = _cpu(), time.perf_counter()
    for _ in range(n):
        fn()
    return (_cpu() - c0) / n * 1000, (time.perf_counter() - w0) / n * 1000


async def _station_run(
    pki_dir: Path, pin: str | None, devices: int, work: Path, prefix: str, parallel: int = 1
) -> dict[str, Any]:
    farm = subprocess.Popen(  # noqa: ASYNC220 - one long-lived helper, started before timing
        [
            sys.executable,
            "-m",
            "bench.provisioning.device_farm",
            str(work / f"farm-{prefix}"),
            str(pki_dir / "root-ca.pem"),
            str(devices),
            prefix,
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert farm.stdout is not None and farm.stdin is not None
    ports = json.loads(farm.stdout.readline())["ports"]
    repo = SqliteRepository(work / f"{prefix}.db")
    station = Station(pki.StationPki.load(pki_dir, "station-1", pin), repo)
    walls = []
    # Warm-up device (imports, first handshake) is not counted.
    await station.provision(Job(f"{prefix}{0:07d}", "RC-1000"), "127.0.0.1", ports[0], work / f"labels-{prefix}")
    c0, w0 = _cpu(), time.perf_counter()
    gate = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with gate:
            t = time.perf_counter()
            await station.provision(
                Job(f"{prefix}{i:07d}", "RC-1000"), "127.0.0.1", ports[i], work / f"labels-{prefix}"
            )
            walls.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(one(i) for i in range(1, devices)))
    cpu_ms = (_cpu() - c0) / (devices - 1) * 1000
    wall_total = time.perf_counter() - w0
    farm.stdin.close()
    farm.wait(30)
    repo.close()
    return {
        "devices": devices - 1,
        "parallel_fixtures": parallel,
        "station_cpu_ms_per_device": round(cpu_ms, 2),
        "wall_ms_per_device_median": round(statistics.median(walls), 2),
        "wall_ms_per_device_p95": round(sorted(walls)[int(len(walls) * 0.95) - 1], 2),
        "devices_per_hour_wall": round((devices - 1) / wall_total * 3600),
        "devices_per_hour_cpu_bound": round(3600_000 / cpu_ms),
    }


def _breakdown(pki_dir: Path, pin: str | None, work: Path, n: int) -> dict[str, Any]:
    station = pki.StationPki.load(pki_dir, "station-1", pin)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "BENCH001")]))
        .sign(key, hashes.SHA256())
    )
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    now = dt.datetime.now(dt.UTC)
    out: dict[str, Any] = {}
    out["check_csr"] = _per_call(lambda: certs.check_csr(csr_pem, "tls", "BENCH001"), n)
    out["issue_idevid"] = _per_call(
        lambda: certs.idevid_certificate(
            station.signer, station.issuing, csr, "BENCH001", "RC-1000", station.policy, now
        ),
        n,
    )
    out["issue_tls"] = _per_call(
        lambda: certs.tls_certificate(station.signer, station.issuing, csr, "BENCH001", station.policy, now), n
    )
    cert = certs.tls_certificate(station.signer, station.issuing, csr, "BENCH001", station.policy, now)
    nonce = secrets.token_bytes(32)
    sig = key.sign(
        p.pop_message("tls", nonce, cert.public_bytes(serialization.Encoding.DER)), ec.ECDSA(hashes.SHA256())
    )
    out["verify_pop"] = _per_call(lambda: p.verify_pop(cert, "tls", nonce, sig), n)
    lab = label.Label("RC-1000", "BENCH001", "02:00:00:00:00:01", generate_setup_code())
    out["label_render_png_pdf"] = _per_call(lambda: label.render(lab), max(5, n // 10))
    rendered = label.render(lab)
    out["label_write_fsync"] = _per_call(
        lambda: label.write(work / "bench-labels", "BENCH001", rendered), max(5, n // 10)
    )
    repo = SqliteRepository(work / f"breakdown-{secrets.token_hex(4)}.db")
    counter = iter(range(10**9))

    def db_cycle() -> None:
        i = next(counter)
        s = f"DB{i:07d}"
        repo.claim_device(
            s,
            f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            "RC-1000",
            "st",
            "op",
            1.0,
            60.0,
            "1",
            "00",
        )
        for step in ("keys", "issued", "proven", "lock_sent"):
            repo.set_step(s, step, "st", 2.0)
        repo.mark_locked(s, "st", 3.0)

    out["db_sqlite_6_transactions"] = _per_call(db_cycle, max(5, n // 10))
    repo.close()
    return {k: {"cpu_ms": round(v[0], 3), "wall_ms": round(v[1], 3)} for k, v in out.items()}


def _openssl_peer(pki_dir: Path, work: Path, n: int) -> dict[str, float]:
    """Two `openssl x509 -req` runs per device (IDevID-like and TLS-like), same CSR and CA key."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "BENCH001")]))
        .sign(key, hashes.SHA256())
    )
    (work / "peer.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    (work / "ext.cnf").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectAltName=DNS:cam-bench001.local\nextendedKeyUsage=serverAuth\n"
    )
    cmd = [
        "openssl",
        "x509",
        "-req",
        "-in",
        str(work / "peer.csr"),
        "-CA",
        str(pki_dir / "issuing-ca.pem"),
        "-CAkey",
        str(pki_dir / "issuing-ca.key"),
        "-set_serial",
        "0x1234",
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        str(work / "ext.cnf"),
        "-out",
        str(work / "peer.pem"),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    for _ in range(n):
        for _kind in ("idevid", "tls"):
            subprocess.run(cmd, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / n * 1000
    return {"cpu_ms_per_device": round(cpu, 2), "wall_ms_per_device": round((time.perf_counter() - w0) / n * 1000, 2)}


async def run(devices: int, work: Path) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    file_pki = work / "pki-file"
    pki.init_pki(file_pki, policy=certs.Policy(oui="0A1B2C"), station="station-1", now=now)
    load = os.getloadavg()[0]
    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, load {load:.1f} at start",
        "python": sys.version.split()[0],
    }
    result["file_key"] = await _station_run(file_pki, None, devices, work, "BF")
    result["file_key_4_parallel"] = await _station_run(file_pki, None, devices, work, "BP", parallel=4)
    result["file_key_breakdown"] = _breakdown(file_pki, None, work, 200)
    result["peer_openssl_x509_req"] = _openssl_peer(file_pki, work, 20)

    sys.path.insert(0, str(ROOT))
    from tests.provisioning.softhsm import module_path, softhsm_token

    if module_path() is not None:
        with softhsm_token(work / "hsm") as token:
            hsm_pki = work / "pki-hsm"
            pki.init_pki(
                hsm_pki,
                policy=certs.Policy(oui="0A1B2C"),
                station="station-1",
                now=now,
                pkcs11=pki.Pkcs11Ref(token.module, token.label, "issuing"),
                pkcs11_pin=token.pin,
            )
            result["softhsm2_key"] = await _station_run(hsm_pki, token.pin, devices, work, "BH")
            result["softhsm2_breakdown"] = _breakdown(hsm_pki, token.pin, work, 200)
    fk = result["file_key"]["station_cpu_ms_per_device"]
    peer = result["peer_openssl_x509_req"]["cpu_ms_per_device"]
    result["ratios"] = {
        "station_full_flow_cpu_vs_openssl_two_certs": round(fk / peer, 2),
        "openssl_two_certs_wall_vs_station_issue_two_certs_wall": round(
            result["peer_openssl_x509_req"]["wall_ms_per_device"]
            / (
                result["file_key_breakdown"]["issue_idevid"]["wall_ms"]
                + result["file_key_breakdown"]["issue_tls"]["wall_ms"]
            ),
            1,
        ),
    }
    if "softhsm2_key" in result:
        result["ratios"]["softhsm2_vs_file_cpu"] = round(result["softhsm2_key"]["station_cpu_ms_per_device"] / fk, 2)
    return result


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks: factory provisioning station",
        "",
        f"Measured by `python -m bench.provisioning` on {dt.date.today().isoformat()} ({r['machine']}, "
        f"Python {r['python']}). Devices run in a separate process (in-process device simulators on "
        "real loopback ports), so station CPU is this process's alone. Target: at most 50 ms station CPU "
        "per device (10,000 devices/hour/station).",
        "",
        "| run | station CPU ms/device | wall ms/device (median / p95) | devices/hour (wall) "
        "| devices/hour (CPU bound) |",
        "|---|---|---|---|---|",
    ]
    for key, title in (
        ("file_key", "file CA key, one fixture"),
        ("file_key_4_parallel", "file CA key, 4 fixtures"),
        ("softhsm2_key", "SoftHSM2 CA key, one fixture"),
    ):
        if key in r:
            x = r[key]
            lines.append(
                f"| {title} | {x['station_cpu_ms_per_device']} | {x['wall_ms_per_device_median']} / "
                f"{x['wall_ms_per_device_p95']} | {x['devices_per_hour_wall']} | {x['devices_per_hour_cpu_bound']} |"
            )
    peer = r["peer_openssl_x509_req"]
    lines += [
        "",
        f"Peer: `openssl x509 -req` issuing the same two certificates per device from the same CSR and "
        f"issuing key: {peer['cpu_ms_per_device']} ms CPU, {peer['wall_ms_per_device']} ms wall per device "
        "(certificate issuance only).",
        "",
        "Ratios: " + ", ".join(f"{k} = {v}" for k, v in r["ratios"].items()) + ".",
        "",
        "## Where the station time goes (per call)",
        "",
        "| part | file key CPU ms | file key wall ms | SoftHSM2 CPU ms | SoftHSM2 wall ms |",
        "|---|---|---|---|---|",
    ]
    fb, hb = r["file_key_breakdown"], r.get("softhsm2_breakdown", {})
    for part in fb:
        h = hb.get(part, {"cpu_ms": "-", "wall_ms": "-"})
        lines.append(f"| {part} | {fb[part]['cpu_ms']} | {fb[part]['wall_ms']} | {h['cpu_ms']} | {h['wall_ms']} |")
    lines += [
        "",
        "Per device the station runs check_csr x2, issue x2, verify_pop x2, one label render and write, "
        "about 8 database transactions and one mutual-TLS handshake plus six requests. The label "
        "(QR + text, PNG + PDF) is the largest CPU item; wall time is dominated by fsync on both sides "
        "(device session, audit log and identity writes; the station's SQLite with synchronous=FULL and the "
        "label files). Several fixtures per station overlap those waits; how much that gains depends on "
        "the disk and on what else the machine runs (wall numbers above a CPU figure mean contention: "
        "this machine is shared with the other rooms' builds and tests). The event loop and the hand-offs "
        "to worker threads (about 16 per device) account for most of the CPU not listed in the table.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks-provisioning.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prov-") as tmp:
        result = asyncio.run(run(args.devices, Path(tmp)))
    print(json.dumps(result, indent=2))
    if args.write:
        (ROOT / "docs" / "benchmarks-provisioning.md").write_text(to_markdown(result))


if __name__ == "__main__":
    main()
