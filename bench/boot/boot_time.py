"""Boot-to-agent-ready under TCG with a breakdown, and the cost of verification.

Stages are taken from the serial console (U-Boot banner, slot load, kernel start, initramfs
hand-off, camera-init's marks, the agent's "HTTPS listening") and the first TLS handshake through
the forwarded HTTPS port (ready = HTTPS answering). Times are when the host saw each console line,
so they include QEMU's output buffering (well under 0.1 s).

Verification cost: the release image is booted as built (hardened U-Boot, signed FIT with
required configuration signature, dm-verity) and as its unverified twin (bench/boot/noverify.py:
stock U-Boot, FIT without hashes or signature, squashfs mounted directly), alternately, so host
load drifts affect both. The stock U-Boot's autoboot countdown is interrupted and the slot-A boot
command typed at its prompt; the time spent at the prompt is left out of its total.

The host's load average is recorded with the numbers: under TCG, other work on the two cores
stretches every stage.

Usage: python -m bench.boot.boot_time [--build build] [--runs 2] [--no-compare]
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import ssl
import statistics
import tempfile
import time
from pathlib import Path

from bench.boot import noverify
from qemu import build_image, disk
from qemu.board import CPU, BoardRun, Forward
from qemu.run import free_port
from qemu.vm import Guest

ROOT = Path(__file__).resolve().parents[2]
# Console marks after the kernel starts (same for both variants). The agent loads its code while
# the boot stage runs, so "agent_loaded" and "bootstage" come in either order: the marks are
# watched together, each timed when it first appears.
LINUX_MARKS = (
    ("kernel", r"Starting kernel"),
    ("handoff", r"camera-bootverify: verified slot"),
    ("rootfs", r"camera-init: rootfs started"),
    ("network", r"camera-init: network up"),
    ("agent_started", r"camera-init: agent started"),
    ("agent_loaded", r"camera-agent: modules loaded, waiting for the boot stage"),
    ("bootstage", r"camera-init: boot stage done"),
    ("listening", r"camera-agent: HTTPS listening"),
)
# The agent-import row overlaps the camera-init and boot-stage rows: the rows do not add up to the total.
STAGES = (
    ("U-Boot: start to slot load (env, virtio scan, boot counter saveenv)", "uboot", "slot_load"),
    ("U-Boot: read FIT, verify (hashes, RSA-3072 config signature), gunzip kernel", "slot_load", "kernel"),
    ("kernel + initramfs: modules, dm-verity open, mounts, rollback check", "kernel", "handoff"),
    ("camera-init: modules, DHCP", "handoff", "network"),
    ("camera-bootverify boot: attestation + firewall (one Python)", "network", "bootstage"),
    ("agent: Python imports, alongside modules, DHCP and the boot stage", "agent_started", "agent_loaded"),
    ("agent: from boot stage done (and imports done) until HTTPS listens", "gate_open", "listening"),
    ("first TLS handshake from the host", "listening", "ready"),
)
POLL_S = 0.05


def watch(g: Guest, marks: tuple[tuple[str, str], ...], timeout: float) -> dict[str, float]:
    """Seconds after QEMU start at which each mark first appeared, in whatever order they come."""
    pending = {name: re.compile(rx) for name, rx in marks}
    seen: dict[str, float] = {}
    end = time.monotonic() + timeout
    while pending:
        text = g.output
        now = time.monotonic() - g.t0
        for name, rx in list(pending.items()):
            if rx.search(text):
                seen[name] = now
                del pending[name]
        if pending and (time.monotonic() > end or not g.running):
            raise TimeoutError(f"marks not seen: {sorted(pending)}; console tail:\n{text[-3000:]}")
        time.sleep(POLL_S)
    return seen


def first_handshake(port: int, timeout: float) -> float:
    """monotonic() when a TLS handshake through the forwarded port completed. The handshake may
    take seconds on a busy emulated CPU, so it gets a generous timeout of its own (slirp accepts
    on the host side before the guest listens: only a finished handshake counts)."""
    end = time.monotonic() + timeout
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.settimeout(60)
                with ctx.wrap_socket(s):
                    return time.monotonic()
        except (OSError, ssl.SSLError):
            time.sleep(0.2)
    raise TimeoutError(f"no TLS handshake on port {port} within {timeout} s")


def one_boot(bios: Path, disk_path: Path, log: Path, *, stock: bool, cpu: str = CPU) -> dict[str, float]:
    port = free_port()
    g = Guest(BoardRun(bios=bios, disk=disk_path, forwards=(Forward(port, 443),), cpu=cpu), log, deadline_s=900)
    out: dict[str, float] = {}
    prompt_s = 0.0
    with g:
        g.wait_for(r"U-Boot 2023\.01", 120)
        out["uboot"] = g.marks[r"U-Boot 2023\.01"]
        if stock:
            g.wait_for(r"Hit any key to stop autoboot", 120)
            t_key = time.monotonic()
            g.send("\n")
            g.wait_for(r"=> ", 30)
            g.send(noverify.boot_command())
            out["slot_load"] = time.monotonic() - g.t0
            prompt_s = out["slot_load"] - (t_key - g.t0)
        else:
            g.wait_for(r"camera: booting slot A", 120)
            out["slot_load"] = g.marks[r"camera: booting slot A"]
        out.update(watch(g, LINUX_MARKS, 600))
        out["gate_open"] = max(out["bootstage"], out["agent_loaded"])
        out["ready"] = first_handshake(port, 600) - g.t0
    out["at_prompt"] = prompt_s
    out["total"] = out["ready"] - prompt_s
    return out


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _stages(m: dict[str, float]) -> list[float]:
    return [m[b] - m[a] for _label, a, b in STAGES]


def _table(verified: dict[str, float], unverified: dict[str, float] | None) -> str:
    if unverified is None:
        lines = ["| stage | seconds |", "|---|---|"]
        lines += [f"| {label} | {v:.1f} |" for (label, _a, _b), v in zip(STAGES, _stages(verified), strict=True)]
        lines.append(f"| **total: QEMU start to HTTPS answering** | **{verified['total']:.1f}** |")
        return "\n".join(lines)
    lines = ["| stage | verified (release) | unverified twin | difference |", "|---|---|---|---|"]
    for (label, _a, _b), v, u in zip(STAGES, _stages(verified), _stages(unverified), strict=True):
        lines.append(f"| {label} | {v:.1f} | {u:.1f} | {v - u:+.1f} |")
    t_v, t_u = verified["total"], unverified["total"]
    lines.append(f"| **total: QEMU start to HTTPS answering** | **{t_v:.1f}** | **{t_u:.1f}** | "
                 f"**{t_v - t_u:+.1f} ({t_v / t_u:.2f}x)** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", type=Path, default=ROOT / "build")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--no-compare", action="store_true", help="skip the unverified twin")
    args = ap.parse_args(argv)
    args.build = args.build.resolve()  # the twin's .its names its inputs; dtc reads them relative to it
    manifest = build_image.Builder(args.build, "release", "1.0.0", 1).build_all()
    twin = None if args.no_compare else noverify.build(manifest, args.build)
    load_before = Path("/proc/loadavg").read_text().split()[0]
    verified: list[dict[str, float]] = []
    unverified: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(dir=args.build) as tmp:
        for i in range(args.runs):
            d = disk.clone(Path(str(manifest["disk"])), Path(tmp) / f"v{i}.img")
            verified.append(one_boot(Path(str(manifest["bios"])), d, Path(tmp) / f"v{i}.log", stock=False))
            d.unlink()
            print(f"verified run {i}: {verified[-1]['total']:.1f} s", flush=True)
            if twin is not None:
                d = disk.clone(twin[1], Path(tmp) / f"u{i}.img")
                unverified.append(one_boot(twin[0], d, Path(tmp) / f"u{i}.log", stock=True))
                d.unlink()
                print(f"unverified run {i}: {unverified[-1]['total']:.1f} s", flush=True)
    load_after = Path("/proc/loadavg").read_text().split()[0]
    result = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_loadavg_1m": {"before": load_before, "after": load_after},
        "verified_runs": verified,
        "unverified_runs": unverified,
    }
    (args.build / "bench-boot.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    v = _median(verified)
    print(f"\nMedian of {args.runs} boots; host load average {load_before} before, {load_after} after.\n")
    print("Boot to agent-ready (release image):\n")
    print(_table(v, None))
    if unverified:
        print("\nCost of verification (same image, same runs, alternating):\n")
        print(_table(v, _median(unverified)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
