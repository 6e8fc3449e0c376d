"""Install -> boot -> mark-good; fallback; TOCTOU during install; the command-line interface."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.ota import pipeline
from agent.ota.errors import MarkGoodRefused, OtaRefused
from agent.ota.slots import FileSlots, SlotWriter
from bootverify.bundle.bundle import open_bundle
from bootverify.bundle.cms import Keyring
from bootverify.release.pki import Pki
from tests.ota.otakit import bundle, make_device, make_image, now, sha

ROOT = Path(__file__).resolve().parents[2]


def test_install_boot_confirm_raises_index(tmp_path: Path, pki: Pki, image: Path, keyring: Path) -> None:
    b = bundle(pki, tmp_path / "v2.raucb", image, security_version=4)
    dev = make_device(tmp_path / "state", keyring)
    inst = dev.installer
    inst.install(b)
    assert inst.rollback.read() == 0  # not before mark-good: a failed update can still fall back
    assert inst.pending_file.read_text() == "B\n"  # the board's init arms its confirm deadline on it
    with pytest.raises(MarkGoodRefused):
        inst.confirm()  # still running A, but B is the intended slot now
    assert inst.pending_file.exists()
    assert inst.simulate_boot() == "B"
    inst.confirm()
    assert not inst.pending_file.exists()
    st = inst.status()
    assert st["rollback_index"] == 4 and st["booted"] == "B" and st["slots"]["B"]["state"] == "good"
    assert st["attempts_left"]["B"] == 3
    events = [e for e, _o, _d in dev.events]
    for step in ("firmware.install_start", "firmware.verify", "firmware.target_bad", "firmware.write",
                 "firmware.activate", "firmware.boot", "firmware.mark_good", "firmware.rollback_index"):
        assert step in events
    # Next update goes to A, the now-inactive slot; B (running) is untouched.
    b3 = bundle(pki, tmp_path / "v3.raucb", image, version="3.0.0", security_version=4)
    before = sha(dev.slot_b)
    assert inst.install(b3).slot == "A"
    assert sha(dev.slot_b) == before


def test_unconfirmed_update_falls_back(tmp_path: Path, pki: Pki, image: Path, keyring: Path) -> None:
    b = bundle(pki, tmp_path / "v2.raucb", image, security_version=2)
    dev = make_device(tmp_path / "state", keyring)
    inst = dev.installer
    inst.install(b)
    assert [inst.simulate_boot() for _ in range(4)] == ["B", "B", "B", "A"]
    with pytest.raises(MarkGoodRefused) as info:
        inst.confirm()
    assert info.value.code == "ota.not_intended_slot"
    st = inst.status()
    assert st["rollback_index"] == 0
    assert st["last_result"]["outcome"] == "fallback"
    assert inst.pending_file.read_text() == "B\n"  # booted A: the deadline is not armed for A
    # The agent reconciles at start: B leaves the order, is marked bad, and A can be confirmed.
    assert inst.reconcile() == "B"
    assert not inst.pending_file.exists()
    assert inst.reconcile() is None
    st = inst.status()
    assert st["boot_order"] == ["A"] and st["slots"]["B"]["state"] == "bad"
    assert ("firmware.fallback", "failure") in [(e, o) for e, o, _d in dev.events]
    inst.confirm()
    assert inst.status()["attempts_left"]["A"] == 3


def test_failed_health_check_does_not_confirm(tmp_path: Path, pki: Pki, image: Path, keyring: Path) -> None:
    dev = make_device(tmp_path / "state", keyring)
    dev.installer.install(bundle(pki, tmp_path / "b.raucb", image, security_version=3))
    dev.installer.simulate_boot()

    def unhealthy() -> None:
        raise RuntimeError("rtsp service did not start")

    with pytest.raises(MarkGoodRefused):
        dev.installer.confirm(unhealthy)
    assert dev.installer.rollback.read() == 0


class _SwapOnFirstWrite:
    """Attacker model: rewrites the bundle file (in place, or by renaming another over it) while the
    installer is streaming it."""

    def __init__(self, inner: FileSlots, bundle_path: Path, mode: str, replacement: bytes) -> None:
        self._inner = inner
        self._bundle = bundle_path
        self._mode = mode
        self._replacement = replacement

    def path(self, slot: str, slotclass: str = "rootfs") -> Path:
        return self._inner.path(slot, slotclass)

    def open_for_write(self, slot: str, size: int, slotclass: str = "rootfs") -> SlotWriter:
        writer = self._inner.open_for_write(slot, size, slotclass)
        outer = self

        class W:
            first = True

            def writev(self, chunks: Sequence[bytes | memoryview]) -> None:
                if self.first:
                    self.first = False
                    outer.swap()
                writer.writev(chunks)

            def finish(self) -> None:
                writer.finish()

            def abort(self) -> None:
                writer.abort()

        return W()

    def swap(self) -> None:
        if self._mode == "in-place":
            with open(self._bundle, "r+b") as fh:
                fh.seek(0)
                fh.write(self._replacement[: os.path.getsize(self._bundle)])
        else:
            tmp = self._bundle.with_suffix(".evil")
            tmp.write_bytes(self._replacement)
            os.replace(tmp, self._bundle)


@pytest.fixture(scope="module")
def swap_case(tmp_path_factory: pytest.TempPathFactory, pki: Pki, keyring: Path) -> tuple[bytes, bytes, bytes, bytes]:
    """(image, evil image, good bundle, good bundle with the evil payload): built once for both modes."""
    tmp = tmp_path_factory.mktemp("swap")
    # The installer verifies at most as many spans ahead of the first write as it has buffers:
    # the payload must be larger than that for the in-place swap to hit bytes not read yet.
    ahead = pipeline.BUFFERS * pipeline.SPAN_BLOCKS * 4096
    image = make_image(tmp / "img", 3 * ahead, seed=11)
    evil_image = make_image(tmp / "evil", 3 * ahead, seed=12)
    # A different, validly signed bundle of the same size: only the payload bytes differ.
    g = bundle(pki, tmp / "good.raucb", image).read_bytes()
    o = bundle(pki, tmp / "other.raucb", evil_image).read_bytes()
    # Keep the good bundle's signature and tree: a pure payload swap.
    payload = open_bundle(lambda off, n: g[off : off + n], len(g), Keyring.from_pem(keyring.read_bytes()),
                          now()).layout.payload_size
    return image.read_bytes(), evil_image.read_bytes(), g, o[:payload] + g[payload:]


@pytest.mark.parametrize("mode", ["in-place", "rename"])
def test_bundle_swapped_during_install(tmp_path: Path, keyring: Path, mode: str,
                                       swap_case: tuple[bytes, bytes, bytes, bytes]) -> None:
    image, evil_image, good_bytes, replacement = swap_case
    good = tmp_path / "good.raucb"
    good.write_bytes(good_bytes)
    dev = make_device(tmp_path / "state", keyring)
    dev.installer.slots = _SwapOnFirstWrite(FileSlots(dev.state.ota_dir), good, mode, replacement)
    a_before = sha(dev.slot_a)
    if mode == "in-place":
        with pytest.raises(OtaRefused) as info:
            dev.installer.install(good)
        assert info.value.reason in ("bundle.verity_mismatch", "bundle.verity_tree")
        assert "B" not in dev.installer.status()["boot_order"]
    else:
        # The installer holds the original file open: the renamed-over file is never read.
        dev.installer.install(good)
        assert dev.slot_b.read_bytes() == image
    assert evil_image[4096:8192] not in (dev.slot_b.read_bytes() if dev.slot_b.exists() else b"")
    assert sha(dev.slot_a) == a_before


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS``: the first few in a real process (exit codes as the shell sees
    them), the rest in this process through the same ``main(argv)`` to keep the test fast."""
    _run.calls = getattr(_run, "calls", 0) + 1  # type: ignore[attr-defined]
    if _run.calls <= 2 or env:  # type: ignore[attr-defined]
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, check=False)
    assert args[0] == "-m"
    module = importlib.import_module(args[1])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = module.main(list(args[2:]))
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def test_command_line_end_to_end(tmp_path: Path) -> None:
    _run.calls = 0  # type: ignore[attr-defined]
    ota = ("-m", "bootverify.release.cli")
    agent = ("-m", "agent.ota.cli", "ota")
    assert _run(*ota, "pki", "init", "--dir", str(tmp_path / "pki")).returncode == 0
    image = make_image(tmp_path / "rootfs.img", 1_500_000, seed=5)
    out = tmp_path / "u.raucb"
    res = _run(*ota, "bundle", "--pki", str(tmp_path / "pki"), "--compatible", "RC-1000", "--version", "2.0.0",
               "--security-version", "2", "--image", f"rootfs={image}", "-o", str(out))
    assert res.returncode == 0, res.stderr
    keyring = tmp_path / "pki" / "root.pem"
    res = _run(*ota, "verify", "--keyring", str(keyring), str(out))
    assert res.returncode == 0 and json.loads(res.stdout)["ok"] is True
    info: dict[str, Any] = json.loads(_run(*ota, "info", "--keyring", str(keyring), str(out)).stdout)
    assert info["security_version"] == 2 and info["compatible"] == "RC-1000"
    # Rotation: a new signing certificate, re-sign, the device needs nothing new.
    assert _run(*ota, "pki", "rotate", "--dir", str(tmp_path / "pki")).returncode == 0
    resigned = tmp_path / "r.raucb"
    res = _run(*ota, "resign", "--pki", str(tmp_path / "pki"), "--keyring", str(keyring), str(out), "-o",
               str(resigned))
    assert res.returncode == 0, res.stderr
    assert json.loads(_run(*ota, "info", "--keyring", str(keyring), str(resigned)).stdout)["signers"][0]["serial"] \
        != info["signers"][0]["serial"]
    state = tmp_path / "state"
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"device": {"model": "RC-1000", "firmware_version": "1.0.0"}}))
    res = _run(*agent, "install", "--state-dir", str(state), "--config", str(cfg), "--keyring", str(keyring),
               str(resigned))
    assert res.returncode == 0, res.stderr
    st = json.loads(_run(*agent, "status", "--state-dir", str(state), "--config", str(cfg)).stdout)
    assert st["boot_order"] == ["B", "A"] and st["slots"]["B"]["version"] == "2.0.0"
    assert _run(*agent, "boot", "--state-dir", str(state), "--config", str(cfg)).returncode == 0
    assert _run(*agent, "mark-good", "--state-dir", str(state), "--config", str(cfg)).returncode == 0
    st = json.loads(_run(*agent, "status", "--state-dir", str(state), "--config", str(cfg)).stdout)
    assert st["rollback_index"] == 2
    # A tampered bundle: exit status 1, opaque message; the reason is in the device's audit log.
    bad = tmp_path / "bad.raucb"
    data = bytearray(resigned.read_bytes())
    data[len(data) // 3] ^= 1
    bad.write_bytes(bytes(data))
    res = _run(*agent, "install", "--state-dir", str(state), "--config", str(cfg), "--keyring", str(keyring), str(bad))
    assert res.returncode == 1
    assert json.loads(res.stderr)["error"] == "update refused"
    audit = b"".join(p.read_bytes() for p in (state / "data" / "audit").glob("seg-*"))
    assert b"bundle.verity_mismatch" in audit
    # Revocation: revoke the current signer; bundles it signs afterwards are refused.
    serial = json.loads(_run(*ota, "info", "--keyring", str(keyring), str(resigned)).stdout)["signers"][0]["serial"]
    assert _run(*ota, "pki", "revoke", "--dir", str(tmp_path / "pki"), "--serial", serial).returncode == 0
    res = _run(*ota, "bundle", "--cert", str(tmp_path / "pki" / f"signing-{serial}.pem"), "--key",
               str(tmp_path / "pki" / f"signing-{serial}.key"), "--compatible", "RC-1000", "--version", "2.1.0",
               "--security-version", "2", "--image", f"rootfs={image}", "-o", str(tmp_path / "rv.raucb"))
    assert res.returncode == 0, res.stderr
    # The device already learned the CRL? No: this bundle carries none. Ship the CRL via a good bundle.
    assert _run(*ota, "pki", "rotate", "--dir", str(tmp_path / "pki")).returncode == 0
    assert _run(*ota, "bundle", "--pki", str(tmp_path / "pki"), "--compatible", "RC-1000", "--version", "2.0.5",
                "--security-version", "2", "--image", f"rootfs={image}", "-o",
                str(tmp_path / "crl.raucb")).returncode == 0
    assert _run(*agent, "install", "--state-dir", str(state), "--config", str(cfg), "--keyring", str(keyring),
                str(tmp_path / "crl.raucb")).returncode == 0
    res = _run(*agent, "install", "--state-dir", str(state), "--config", str(cfg), "--keyring", str(keyring),
               str(tmp_path / "rv.raucb"))
    assert res.returncode == 1
    audit = b"".join(p.read_bytes() for p in (state / "data" / "audit").glob("seg-*"))
    assert b"bundle.signer_revoked" in audit


def test_rollback_store_monotonic_and_fail_closed(tmp_path: Path, pki: Pki, keyring: Path, image: Path) -> None:
    dev = make_device(tmp_path / "state", keyring)
    rb = dev.installer.rollback
    assert rb.advance(5) == 5
    assert rb.advance(3) == 5  # never lowered
    assert rb.read() == 5
    counter = dev.state.otp_dir / "security-version"
    assert counter.read_text() == "5\n" and (counter.stat().st_mode & 0o777) == 0o600
    counter.write_text("garbage")
    with pytest.raises(OtaRefused) as info:
        dev.installer.install(bundle(pki, tmp_path / "b.raucb", image, security_version=9))
    assert info.value.reason == "ota.rollback_store"
    assert not dev.slot_b.exists()
