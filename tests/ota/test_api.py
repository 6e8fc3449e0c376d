"""The firmware API on a real agent over TLS: roles, streamed upload, refusal, mark-good, pull."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import capabilities as capability_list
from agent.app import create_app
from agent.auth import claim
from agent.config import build_config
from agent.ota.capability import OtaCapability
from agent.ota.pull import spki_sha256
from agent.runtime import build_services
from agent.tlsconfig import client_context, server_context
from bootverify.release.pki import Pki
from tests.agentharness import Agent, audit_records, free_port
from tests.ota.otakit import COMPATIBLE, bundle, make_image


@contextlib.asynccontextmanager
async def ota_agent(state_dir: Path, keyring: Path, **ota: Any) -> AsyncIterator[tuple[Agent, OtaCapability]]:
    https_port = free_port()
    cfg = build_config(state_dir, {"bind": "127.0.0.1", "device": {"model": COMPATIBLE, "firmware_version": "1.0.0"},
                                   "ota": {"keyring": str(keyring), "confirm_delay_s": 3600, **ota}},
                       https_port=https_port, rtsps_port=free_port())
    svc = build_services(cfg)
    claim.ensure_host_setup_code(svc.state, svc.secret)
    code = svc.state.setup_code_file.read_text().strip()
    caps = [c for c in capability_list.load(svc) if c.name in ("core", "audit")]
    ota_cap = OtaCapability(svc)
    app = create_app(svc, [*caps, ota_cap])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", https_port, ssl_context=svc.identity.server_ssl_context())
    await site.start()
    await ota_cap.start()
    ca_file = state_dir / "test-ca.pem"
    ca_file.write_bytes(svc.identity.trust_anchor_pem())
    async with aiohttp.ClientSession() as http:
        try:
            yield Agent(svc, f"https://127.0.0.1:{https_port}", https_port, 0, ca_file, code,
                        client_context(cafile=ca_file), http, app), ota_cap
        finally:
            await ota_cap.stop()
            await runner.cleanup()
            svc.audit.close()


async def test_roles_upload_and_mark_good(tmp_path: Path, pki: Pki, keyring: Path, image: Path) -> None:
    b = bundle(pki, tmp_path / "b.raucb", image, security_version=2)
    async with ota_agent(tmp_path / "state", keyring) as (agent, cap):
        admin = await agent.claim()
        viewer = await agent.add_user(admin, "viewer1", "viewer")
        operator = await agent.add_user(admin, "op1", "operator")
        for tok in (viewer, operator):
            assert (await agent.request("GET", "/api/v1/firmware", token=tok))[0] == 403
            status, _ = await agent.request("POST", "/api/v1/firmware", token=tok, data=b.read_bytes(),
                                            headers={"Content-Type": "application/octet-stream"})
            assert status == 403
        assert (await agent.request("GET", "/api/v1/firmware"))[0] == 401
        status, body = await agent.request("GET", "/api/v1/firmware", token=admin)
        assert status == 200 and body["boot_order"] == ["A"]
        # Tampered upload: one opaque answer, the reason audited with the admin's name.
        bad = bytearray(b.read_bytes())
        bad[len(bad) // 3] ^= 1
        status, body = await agent.request("POST", "/api/v1/firmware", token=admin, data=bytes(bad),
                                           headers={"Content-Type": "application/octet-stream"})
        assert status == 400 and body["error"]["code"] == "ota.refused" and body["error"]["message"] == "update refused"
        recs = [r for r in audit_records(agent.svc) if r["event"].startswith("firmware.")]
        assert any(r["details"].get("reason") == "bundle.verity_mismatch" and r["actor"] == "owner" for r in recs)
        status, body = await agent.request("POST", "/api/v1/firmware", token=admin, data=b.read_bytes(),
                                           headers={"Content-Type": "application/octet-stream"})
        assert status == 200, body
        assert body["slot"] == "B" and body["version"] == "2.0.0"
        assert not list((agent.svc.state.ota_dir / "incoming").iterdir())
        # Not rebooted yet: the running slot is not the intended one, mark-good refuses.
        status, body = await agent.request("POST", "/api/v1/firmware/mark-good", token=admin)
        assert status == 409 and body["error"]["code"] == "ota.not_intended_slot"
        cap.installer.simulate_boot()
        status, body = await agent.request("POST", "/api/v1/firmware/mark-good", token=admin)
        assert status == 200, body
        status, body = await agent.request("GET", "/api/v1/firmware", token=admin)
        assert body["rollback_index"] == 2 and body["slots"]["B"]["state"] == "good"


async def test_upload_size_cap(tmp_path: Path, keyring: Path) -> None:
    async with ota_agent(tmp_path / "state", keyring, max_bundle_bytes=1 << 20) as (agent, _cap):
        admin = await agent.claim()

        async def body() -> AsyncIterator[bytes]:  # chunked: no Content-Length to reject up front
            for _ in range(40):
                yield b"\0" * 65536

        async with agent.http.post(agent.base + "/api/v1/firmware", data=body(), ssl=agent.ssl,
                                   headers={"Authorization": f"Bearer {admin}",
                                            "Content-Type": "application/octet-stream"}) as resp:
            assert resp.status == 413
        assert not list((agent.svc.state.ota_dir / "incoming").iterdir())
        status, _ = await agent.request("POST", "/api/v1/firmware", token=admin, data=b"\0" * (2 << 20),
                                        headers={"Content-Type": "application/octet-stream"})
        assert status == 413


# ---- pull from an update server ----------------------------------------------------------------


def _server_tls(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "updates.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("updates.example")]), critical=False)
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    ctx = server_context(cert.public_bytes(serialization.Encoding.PEM),
                         key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ctx, spki_sha256(der)


@contextlib.asynccontextmanager
async def update_server(tmp_path: Path, payload: bytes, *, cut_first_at: int | None = None
                        ) -> AsyncIterator[tuple[str, str, list[dict[str, str]]]]:
    ctx, pin = _server_tls(tmp_path)
    seen: list[dict[str, str]] = []
    etag = '"' + hashlib.sha256(payload).hexdigest()[:16] + '"'

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304)
        start = 0
        rng = request.headers.get("Range")
        if rng and request.headers.get("If-Range") == etag:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
        resp = web.StreamResponse(status=206 if start else 200)
        resp.headers["ETag"] = etag
        resp.content_length = len(payload) - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(payload) - 1}/{len(payload)}"
        await resp.prepare(request)
        if cut_first_at is not None and len(seen) == 1:
            await resp.write(payload[:cut_first_at])
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-download
            return resp
        await resp.write(payload[start:])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/latest.raucb", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx)
    await site.start()
    try:
        yield f"https://127.0.0.1:{port}/latest.raucb", pin, seen
    finally:
        await runner.cleanup()


async def test_pull_resumes_and_installs(tmp_path: Path, pki: Pki, keyring: Path) -> None:
    image = make_image(tmp_path / "img", 2_000_000, seed=21)
    payload = bundle(pki, tmp_path / "p.raucb", image, security_version=1).read_bytes()
    async with update_server(tmp_path, payload, cut_first_at=700_000) as (url, pin, seen), \
            ota_agent(tmp_path / "state", keyring, pull={"backoff_s": 0.05, "max_backoff_s": 0.1}) as (agent, _cap):
        admin = await agent.claim()
        status, _ = await agent.request("PATCH", "/api/v1/settings", token=admin,
                                        json_body={"update": {"server_url": url, "pin_sha256": pin}})
        assert status == 200
        status, body = await agent.request("POST", "/api/v1/firmware/check", token=admin)
        assert status == 200, body
        assert body["slot"] == "B"
        assert any("Range" in h for h in seen[1:]), seen  # resumed, not restarted
        assert (agent.svc.state.ota_dir / "slots" / "B.img").read_bytes() == image.read_bytes()
        # Same bundle still offered: the device asks with If-None-Match and does nothing.
        status, body = await agent.request("POST", "/api/v1/firmware/check", token=admin)
        assert (status, body) == (200, {"up_to_date": True})


async def test_pull_wrong_pin_no_fallback(tmp_path: Path, pki: Pki, keyring: Path, good_bundle: Path) -> None:
    payload = await asyncio.to_thread(good_bundle.read_bytes)
    async with update_server(tmp_path, payload) as (url, _pin, seen), \
            ota_agent(tmp_path / "state", keyring, pull={"backoff_s": 0.01, "retries": 3}) as (agent, _cap):
        admin = await agent.claim()
        status, _ = await agent.request("PATCH", "/api/v1/settings", token=admin,
                                        json_body={"update": {"server_url": url, "pin_sha256": "0" * 64}})
        assert status == 200
        status, body = await agent.request("POST", "/api/v1/firmware/check", token=admin)
        assert status == 502 and body["error"]["code"] == "ota.pin_mismatch"
        assert seen == []  # the pin is checked after the handshake, before the request is written
        assert not (agent.svc.state.ota_dir / "slots" / "B.img").exists()
        recs = [r for r in audit_records(agent.svc) if r["event"] == "firmware.pull"]
        assert recs[-1]["outcome"] == "failure" and recs[-1]["details"]["reason"] == "ota.pin_mismatch"


async def test_schedule_pulls_inside_window(tmp_path: Path, pki: Pki, keyring: Path, good_bundle: Path) -> None:
    payload = await asyncio.to_thread(good_bundle.read_bytes)
    async with update_server(tmp_path, payload) as (url, pin, seen), \
            ota_agent(tmp_path / "state", keyring, check_interval_s=3600, window_jitter_s=0.0) as (agent, cap):
        admin = await agent.claim()
        now = dt.datetime.now().astimezone()
        start = (now - dt.timedelta(minutes=5)).strftime("%H:%M")
        end = (now + dt.timedelta(minutes=30)).strftime("%H:%M")
        status, _ = await agent.request("PATCH", "/api/v1/settings", token=admin, json_body={"update": {
            "server_url": url, "pin_sha256": pin, "auto": True, "window_start": start, "window_end": end}})
        assert status == 200
        await cap.stop()
        await cap.start()  # the loop reads the new settings
        for _ in range(100):
            if cap.last_pull is not None:
                break
            await asyncio.sleep(0.1)
        assert cap.last_pull is not None and cap.last_pull["outcome"] == "installed", cap.last_pull
        recs = [r for r in audit_records(agent.svc) if r["event"] == "firmware.activate"]
        assert recs and recs[-1]["actor"] == "scheduler"
        assert seen


@pytest.mark.parametrize(("now_hm", "start", "end", "inside"), [
    ("02:30", "02:00", "04:00", True), ("04:00", "02:00", "04:00", False), ("23:30", "22:00", "04:00", True),
    ("03:59", "22:00", "04:00", True), ("12:00", "22:00", "04:00", False), ("12:00", "05:00", "05:00", True),
])
def test_window(now_hm: str, start: str, end: str, inside: bool) -> None:
    from agent.ota.schedule import in_window, seconds_until_window

    h, m = map(int, now_hm.split(":"))
    now = dt.datetime(2026, 1, 1, h, m)
    assert in_window(now, start, end) is inside
    wait = seconds_until_window(now, start, end, jitter_s=0.0)
    assert (wait == 0) is inside
    assert wait < 24 * 3600


@pytest.mark.parametrize(("status", "headers", "asked", "result"), [
    (200, {"Content-Length": "10"}, None, (False, 10)),
    (200, {"Content-Length": "10"}, 5, (False, 10)),  # server ignored Range: restart
    (206, {"Content-Range": "bytes 5-9/10"}, 5, (True, 10)),
    (206, {"Content-Range": "bytes 0-9/10"}, None, "ota.pull_protocol"),  # never asked for a range
    (206, {"Content-Range": "bytes 4-9/10"}, 5, "ota.pull_protocol"),
    (206, {"Content-Range": "items 5-9/10"}, 5, "ota.pull_protocol"),
    (200, {"Content-Length": str(1 << 40)}, None, "ota.pull_too_large"),
    (304, {}, None, "ota.up_to_date"),
    (404, {}, None, "ota.pull_http"),
])
def test_accept_response(status: int, headers: dict[str, str], asked: int | None, result: object) -> None:
    from agent.ota.pull import PullError, accept_response

    if isinstance(result, str):
        with pytest.raises(PullError) as info:
            accept_response(status, headers, asked, 1 << 30)
        assert info.value.code == result
    else:
        assert accept_response(status, headers, asked, 1 << 30) == result


def test_plan_request_and_backoff() -> None:
    import random

    from agent.ota.pull import ResumeState, backoff_delays, plan_request

    url = "https://u/x"
    assert plan_request(url, ResumeState(url, '"e1"', 5), 5) == {"Range": "bytes=5-", "If-Range": '"e1"'}
    assert plan_request(url, ResumeState(url, 'W/"e1"', 5), 5) == {}  # weak ETag: never resume
    assert plan_request(url, ResumeState("https://other/x", '"e1"', 5), 5) == {}
    assert plan_request(url, None, 0, ResumeState(url, '"e2"', 0)) == {"If-None-Match": '"e2"'}
    delays = list(backoff_delays(6, 1.0, 10.0, random.Random(1)))
    assert len(delays) == 6 and all(0 <= d <= min(10.0, 2**n) for n, d in enumerate(delays))


async def test_auto_mark_good_and_fallback_at_start(tmp_path: Path, pki: Pki, keyring: Path, image: Path) -> None:
    b = await asyncio.to_thread(bundle, pki, tmp_path / "b.raucb", image, security_version=3)
    async with ota_agent(tmp_path / "state", keyring, confirm_delay_s=0.1) as (agent, cap):
        await agent.claim()
        inst = cap.installer
        await asyncio.to_thread(inst.install, b)
        await asyncio.to_thread(inst.simulate_boot)  # "reboot" into B
        await cap.stop()
        await cap.start()  # the agent starting on B: health check, then mark-good
        # Polls end as soon as the state is reached. 20 s, not 5: the health check is a TLS
        # handshake, and the test failed once at load average 8-9 with the 5 s window (which
        # assertion was not recorded; not reproduced in five reruns).
        for _ in range(400):
            st = await asyncio.to_thread(inst.status)
            if st["slots"]["B"]["state"] == "good":
                break
            await asyncio.sleep(0.05)
        assert st["slots"]["B"]["state"] == "good" and st["rollback_index"] == 3
        # The status is read without the install lock: the state shows "good" while confirm()
        # still holds the lock, and an install started then is refused as busy (seen once).
        await asyncio.wait_for(cap._tasks[0], 20)
        recs = [r for r in audit_records(agent.svc) if r["event"] == "firmware.mark_good"]
        assert recs[-1]["outcome"] == "success" and recs[-1]["actor"] == "system"
        # Next update never confirms: three tries on A, then the bootloader falls back to B.
        b2 = await asyncio.to_thread(bundle, pki, tmp_path / "b2.raucb", image, version="2.1.0",
                                     security_version=4)
        await asyncio.to_thread(inst.install, b2)
        for _ in range(4):
            await asyncio.to_thread(inst.simulate_boot)
        await cap.stop()
        await cap.start()
        # The installer marks the slot bad, then audits the fallback: wait for both.
        fallback = False
        for _ in range(400):
            st = await asyncio.to_thread(inst.status)
            fallback = any(r["event"] == "firmware.fallback" for r in audit_records(agent.svc))
            if st["slots"]["A"]["state"] == "bad" and fallback:
                break
            await asyncio.sleep(0.05)
        assert st["booted"] == "B" and st["boot_order"] == ["B"] and st["slots"]["A"]["state"] == "bad"
        assert st["rollback_index"] == 3  # the failed update never raised it
        assert fallback
        # The good slot that took over gets back the attempt U-Boot took for this boot.
        for _ in range(100):
            st = await asyncio.to_thread(inst.status)
            if st["attempts_left"]["B"] == 3:
                break
            await asyncio.sleep(0.05)
        assert st["attempts_left"]["B"] == 3


async def test_good_slot_counter_restored_each_boot(tmp_path: Path, keyring: Path) -> None:
    """Without an update, every boot still costs the running slot one U-Boot attempt; the agent
    gives it back after the health check, or a camera would fall back after N plain reboots."""
    async with ota_agent(tmp_path / "state", keyring, confirm_delay_s=0.1) as (_agent, cap):
        inst = cap.installer
        for _ in range(5):
            await cap.stop()
            await asyncio.to_thread(inst.simulate_boot)
            await cap.start()
            for _ in range(100):
                st = await asyncio.to_thread(inst.status)
                if st["attempts_left"]["A"] == 3:
                    break
                await asyncio.sleep(0.05)
            assert st["booted"] == "A" and st["attempts_left"]["A"] == 3, st
