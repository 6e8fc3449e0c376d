"""kill -9 at 100 random points of an install: active slot untouched, state consistent, next install works."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.audit.log import AuditLog
from agent.devicesecret import FileDeviceSecret
from agent.state import StateDir
from bootverify.release.pki import Pki
from tests.ota.otakit import bundle, make_image

TRIALS = 100


@pytest.fixture(scope="module")
def killed_installs(tmp_path_factory: pytest.TempPathFactory, pki: Pki, keyring: Path) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("powercut")
    # Large enough that the install hands spans to a hashing worker process (pipeline.SELF_HEAD).
    image = make_image(tmp_path / "rootfs.img", 24 * 1024 * 1024, seed=7)
    image_sha = hashlib.sha256(image.read_bytes()).hexdigest()
    b = bundle(pki, tmp_path / "b.raucb", image)
    state = tmp_path / "state"
    StateDir.open(state)
    slots = state / "data" / "ota" / "slots"
    slots.mkdir(mode=0o700)
    (slots / "A.img").write_bytes(b"running system A\n" * 65536)
    a_sha = hashlib.sha256((slots / "A.img").read_bytes()).hexdigest()
    seed = secrets.randbits(32)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.ota.powercut_worker", str(state), str(keyring), str(b), str(TRIALS), str(seed)],
        capture_output=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    out.update(image_sha=image_sha, a_sha=a_sha, state=str(state))
    return out


@pytest.mark.slow
def test_install_state_survives_kills(killed_installs: dict[str, Any]) -> None:
    out = killed_installs
    seed, image_sha, a_sha = out["seed"], out["image_sha"], out["a_sha"]
    assert out["baseline_rc"] == 0, out
    killed = [t for t in out["trials"] if t["killed"]]
    assert len(killed) >= TRIALS * 0.5, f"seed {seed}: only {len(killed)} kills landed during the install"
    for t in out["trials"]:
        ctx = f"seed {seed}, delay {t['delay']:.4f}"
        assert t["a_sha"] == a_sha, ctx
        assert "boot_error" not in t and "slots_error" not in t, (ctx, t)
        boot = t["boot"]
        assert boot is not None, ctx
        if "B" in boot["order"]:
            # B is bootable only when it is complete and recorded as installed.
            assert t["b_sha"] == image_sha, ctx
            assert t["slots"]["B"]["state"] == "installed", ctx
        assert t["would_boot"] in ("A", "B"), ctx
        if t["would_boot"] == "B":
            assert t["b_sha"] == image_sha, ctx
        assert t["workers_left"] == [], ctx
    # Some kills landed while a hashing worker was running (and it did not outlive the installer).
    assert sum(t["workers"] for t in killed) >= 5, f"seed {seed}"
    assert out["final_rc"] == 0, out["final"]
    assert out["final"]["b_sha"] == image_sha
    assert out["final"]["boot"]["order"] == ["B", "A"]


@pytest.mark.slow
def test_audit_log_survives_kills(killed_installs: dict[str, Any]) -> None:
    # The audit log survived 100 kills (torn tails are repaired, not treated as tampering).
    st = StateDir.open(Path(killed_installs["state"]))
    log = AuditLog(st.audit_dir, FileDeviceSecret(st.device_secret_file).derive("audit-mac"))
    try:
        assert log.status()
    finally:
        log.close()
    assert not (st.audit_dir / "quarantine").exists()
