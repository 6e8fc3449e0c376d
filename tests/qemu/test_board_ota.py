"""OTA on the reference board, end to end, the way an operator does it: upload a signed bundle through
the management API as the admin, power-cycle, and read the result from the API and the audit log.

One provisioned board serves both tests (boots are the expensive part under TCG):
1. 1.0.0 (security version 1) -> bundle 1.1.0 (security version 2) into slot B -> power cycle ->
   B boots verified (attestation green, the new root hash) -> the agent's health check confirms it
   -> anti-rollback counter 2; a 1.0.0 bundle (security version 1, signed with the same release key)
   is then refused and audited.
2. 1.2.0 whose agent never becomes healthy (it refuses its own configuration) into slot A -> power
   cycle -> camera-init's confirm deadline reboots it, U-Boot counts 3 attempts, then boots B again;
   the agent on B records the fallback in the audit log.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bootverify.release.builder import build_bundle
from bootverify.release.pki import Pki
from bootverify.release.signers import load_file_signer
from qemu.build_image import Builder
from qemu.run import Session

# Under TCG on 2 shared cores the guest needs minutes per install (upload, verify, write 140 MB).
pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(1800)]
ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
# Short for the test image only (production images: build_image.CONFIRM_DEADLINE_S): the agent of
# the broken image never starts, so each of its 3 boots waits this long.
BROKEN_DEADLINE_S = 10


class Api:
    """The management API over HTTPS, trusting only the device CA the station issued."""

    def __init__(self, port: int, ca_file: str, username: str, password: str) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=ca_file)
        self.ctx.check_hostname = False  # the certificate names the serial; we reach it as 127.0.0.1
        self.credentials = {"username": username, "password": password}
        self.token = ""

    def request(self, method: str, path: str, body: bytes | Any = None, *, timeout: float = 120,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=timeout)
        try:
            hdrs = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            hdrs.update(headers or {})
            if isinstance(body, dict):
                body = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def login(self) -> None:
        self.token = ""
        status, body = self.request("POST", "/api/v1/login", self.credentials)
        assert status == 200, body[:300]
        self.token = json.loads(body)["token"]

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body) if not path.startswith("/api/v1/audit") else [
            json.loads(line) for line in body.splitlines() if line.strip()]

    def upload(self, bundle: Path) -> tuple[int, Any]:
        # Streamed from the file like `curl -T`; the install (verify + write both partitions) runs
        # in the guest under TCG before the response comes.
        with open(bundle, "rb") as fh:
            status, body = self.request(
                "POST", "/api/v1/firmware", fh, timeout=900,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(bundle.stat().st_size)})
        return status, json.loads(body)


@pytest.fixture(scope="module")
def updates(release_image: dict[str, object]) -> dict[str, dict[str, object]]:
    # Incremental: U-Boot, debs, wheels, the boot stage and the keys come from the factory build.
    good = Builder(BUILD, "release", "1.1.0", 2, variant="release-1.1.0").build_all(disk=False)
    broken = Builder(BUILD, "release", "1.2.0", 2, variant="release-1.2.0-broken",
                     agent_overrides={"limits": {"no_such_limit": 1}},
                     confirm_deadline_s=BROKEN_DEADLINE_S).build_all(disk=False)
    return {"good": dict(good), "broken": dict(broken)}


@pytest.fixture(scope="module")
def older_bundle(release_image: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.0.0 with security version 1, signed with the board's release key like every real bundle,
    but with small images: the device refuses it on its security version, before any image byte
    is read, so the 110 MB factory bundle would only add minutes of upload through the emulated
    network (about 2.5 min here) and prove nothing more."""
    tmp = tmp_path_factory.mktemp("older")
    images = {}
    for slotclass in ("fit", "rootfs"):
        images[slotclass] = tmp / f"{slotclass}.img"
        images[slotclass].write_bytes(os.urandom(64 * 1024))
    pki = Pki(BUILD / "ota-pki")
    out = tmp / "older.raucb"
    build_bundle(out, images=images, compatible=str(release_image["compatible"]), version="1.0.0",
                 security_version=1, signers=[load_file_signer(*pki.current_signing())],
                 now=dt.datetime.now(dt.UTC))
    return out


@pytest.fixture(scope="module")
def board(release_image: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, Api]]:
    session = Session(BUILD, timeout=600, run_dir=tmp_path_factory.mktemp("ota-run"))
    try:
        info = session.start()
        api = Api(session.https_port, info["ca_file"], info["username"], info["password"])
        api.login()
        # The synthetic camera encodes 1080p30 + 360p15 with libx264 in software; under TCG that
        # took ~80 % of the board's two emulated CPUs (guest `top`, docs/board.md) and starved the
        # upload and the install. A camera's SoC encodes in hardware, so the update tests turn the
        # streams down the way an operator would (the setting persists across the power cycles).
        status, body = api.request("PATCH", "/api/v1/settings/video", {
            "main": {"codec": "h264", "width": 320, "height": 180, "fps": 5, "bitrate_kbps": 256, "gop": 10},
            "sub": {"codec": "h264", "width": 160, "height": 120, "fps": 5, "bitrate_kbps": 64, "gop": 10}})
        assert status == 200, body[:300]
        yield session, api
    finally:
        session.stop()


def _install_timing(api: Api, wall_s: float) -> str:
    """Where an upload's time went, from the guest's own audit records (spool end, install start,
    activation): printed by the tests so a run shows upload and install separately."""
    def at(event: str) -> float:
        rec = [r for r in api.get("/api/v1/audit") if r["event"] == event][-1]
        return dt.datetime.fromisoformat(rec["time"].replace("Z", "+00:00")).timestamp()

    install = at("firmware.activate") - at("firmware.install_start")
    return f"request {wall_s:.1f} s, of which install (verify + write + activate) {install:.1f} s in the guest"


def _poll(api: Api, done: Any, what: str, polls: int = 90) -> dict[str, Any]:
    """GET /api/v1/firmware until ``done(status)``; the agent acts ota.confirm_delay_s after start."""
    st: dict[str, Any] = {}
    for _ in range(polls):
        st = api.get("/api/v1/firmware")
        if done(st):
            return st
        time.sleep(2)
    raise AssertionError(f"{what}: {st}")


def test_update_boots_new_slot_confirms_and_raises_counter(
        board: tuple[Session, Api], updates: dict[str, dict[str, object]],
        release_image: dict[str, object], older_bundle: Path) -> None:
    session, api = board
    assert session.guest is not None
    # Locking the device at the end of provisioning closed the factory port in the firewall at once.
    session.guest.wait_for(r"firewall applied \(in: 443,322; ", 60)
    before = api.get("/api/v1/firmware")
    assert before["booted"] == "A" and before["running_version"] == "1.0.0"
    assert before["rollback_index"] == 0  # factory-fresh: nothing confirmed above 0 yet

    t0 = time.monotonic()
    status, res = api.upload(Path(str(updates["good"]["bundle"])))
    assert status == 200, res
    assert res == {"slot": "B", "version": "1.1.0", "security_version": 2, "reboot_required": True}
    print(f"[ota] upload of 1.1.0: {_install_timing(api, time.monotonic() - t0)}", flush=True)

    print(f"[ota] boot of slot B: ready after {session.power_cycle():.1f} s", flush=True)
    assert session.guest is not None
    session.guest.wait_for(r"camera: booting slot B", 5)
    session.guest.wait_for(r"camera-bootverify: verified slot B", 5)
    api.login()
    status_doc = api.get("/api/v1/status")
    att = status_doc["capabilities"]["core"]["boot_attestation"]
    assert status_doc["device"]["firmware_version"] == "1.1.0"
    assert att["result"] == "green", att
    assert att["slot"] == "B" and att["firmware_version"] == "1.1.0" and att["security_version"] == 2
    assert att["rootfs_root_hash"] == updates["good"]["root_hash"]
    assert att["rootfs_root_hash"] != release_image["root_hash"]
    assert att["firmware_sha256"] == updates["good"]["fit_sha256"]

    # The result is the confirmation's last write (after the counter and the slot record).
    st = _poll(api, lambda s: (s["last_result"] or {}).get("outcome") == "confirmed", "slot B not confirmed")
    assert st["slots"]["B"]["state"] == "good" and st["last_result"]["slot"] == "B"
    assert st["booted"] == "B" and st["boot_order"][0] == "B" and st["attempts_left"]["B"] == 3
    assert st["rollback_index"] == 2 and st["running_version"] == "1.1.0"

    # A 1.0.0 bundle (security version 1) is validly signed with the release key but now too old.
    t0 = time.monotonic()
    status, res = api.upload(older_bundle)
    assert status == 400 and res["error"]["code"] == "ota.refused", res
    print(f"[ota] refused upload of 1.0.0: {time.monotonic() - t0:.1f} s", flush=True)
    audit = api.get("/api/v1/audit")
    blocked = [r for r in audit if r["event"] == "firmware.rollback_blocked"]
    assert blocked and blocked[-1]["outcome"] == "denied"
    assert blocked[-1]["details"]["security_version"] == 1 and blocked[-1]["details"]["rollback_index"] == 2
    assert api.get("/api/v1/firmware")["boot_order"][0] == "B"  # nothing changed


def test_unhealthy_update_falls_back_after_three_attempts(
        board: tuple[Session, Api], updates: dict[str, dict[str, object]]) -> None:
    session, api = board
    st = api.get("/api/v1/firmware")
    good, target = st["booted"], "A" if st["booted"] == "B" else "B"
    index, running = st["rollback_index"], st["running_version"]
    t0 = time.monotonic()
    status, res = api.upload(Path(str(updates["broken"]["bundle"])))
    assert status == 200 and res["slot"] == target, res
    print(f"[ota] upload of 1.2.0: {_install_timing(api, time.monotonic() - t0)}", flush=True)

    # Returns once an agent answers again: after the broken slot's three attempts.
    print(f"[ota] three failed boots and the fallback: ready after {session.power_cycle():.1f} s", flush=True)
    g = session.guest
    assert g is not None
    out = g.output
    assert out.count(f"camera: booting slot {target}") == 3, out[-3000:]
    assert out.count(f"camera-init: slot {target} not confirmed within {BROKEN_DEADLINE_S} s") == 3
    assert f"camera: booting slot {good}" in out.split(f"camera: booting slot {target}")[-1]

    api.login()
    st = _poll(api, lambda s: s["slots"][target].get("state") == "bad", "fallback not recorded")
    assert st["booted"] == good and st["slots"][target]["state"] == "bad", st
    assert st["boot_order"] == [good] and st["rollback_index"] == index  # never raised by the failed slot
    assert st["running_version"] == running
    fallback = [r for r in api.get("/api/v1/audit") if r["event"] == "firmware.fallback"]
    assert fallback and fallback[-1]["details"]["failed_slot"] == target
    assert fallback[-1]["details"]["booted"] == good and fallback[-1]["details"]["version"] == "1.2.0"
