"""The installer: signature first, policy, streaming verified write to the inactive slot, activation.

Steps (each audited as ``firmware.<step>``):
1. open the bundle ONCE (one descriptor; every later read is ``pread`` on it), verify the CMS
   signature against the keyring, then parse the signed manifest (``bootverify.bundle``);
2. policy: exact model-series match, version policy (``min-version``; no version downgrade unless
   configured), anti-rollback (security version >= the rollback index; otherwise
   ``firmware.rollback_blocked``);
3. boot state: the target slot is taken out of BOOT_ORDER (one atomic write) BEFORE a byte of it
   changes, so a power cut during the write can never boot a half-written slot;
4. stream (``agent.ota.pipeline``): every block is checked against the signed verity tree as it is
   read from the bundle and only then written; memory is a few 1 MiB buffers plus a small
   hash-block cache;
5. record the slot's metadata, then ONE atomic write of the boot state: target first with N
   attempts. Mark-good (``confirm``) later raises the rollback index.
Every refusal reaches the caller as ``OtaRefused`` ("update refused"); the reason is audited.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.ota import bootchooser as bc
from agent.ota.antirollback import RollbackIndexStore
from agent.ota.bootchooser import BootChooser, BootState
from agent.ota.errors import MarkGoodRefused, OtaBusy, OtaError, OtaRefused, OtaStateError
from agent.ota.slots import BootedSlotSource, SlotStore
from agent.state import atomic_write, atomic_write_json, ensure_dir, read_json
from bootverify.bundle.limits import BundleLimits
from bootverify.errors import BootVerifyError

if TYPE_CHECKING:
    from bootverify.bundle.bundle import OpenedBundle
    from bootverify.bundle.cms import Keyring
    from bootverify.bundle.manifest import ImageEntry

# audit(event, outcome, details) - sync and thread-safe (AuditLog.append).
AuditFn = Callable[[str, str, Mapping[str, Any]], None]


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    parts = re.split(r"[.\-+~]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


@dataclass(frozen=True)
class InstallPolicy:
    compatible: str
    attempts: int = 3
    allow_version_downgrade: bool = False
    limits: BundleLimits = field(default_factory=BundleLimits)
    # Every class must be in the bundle; a bundle image without a slot class here is refused.
    slot_classes: tuple[str, ...] = ("rootfs",)


@dataclass(frozen=True)
class InstallResult:
    slot: str
    version: str
    security_version: int
    bundle_sha256: str
    bytes_written: int


class OtaState:
    """Slot metadata and the last result: ``<ota_dir>/slots.json`` (atomic, bounded read)."""

    def __init__(self, ota_dir: Path) -> None:
        self.dir = ota_dir
        self.file = ota_dir / "slots.json"
        self.crl_file = ota_dir / "crl.pem"

    def load(self) -> dict[str, Any]:
        try:
            obj = read_json(self.file, max_bytes=64 * 1024)
        except FileNotFoundError:
            return {"slots": {}, "last_result": None}
        if not isinstance(obj, dict) or not isinstance(obj.get("slots"), dict):
            raise OtaStateError("slots.json is corrupt", code="ota.state_corrupt")
        return obj

    def save(self, obj: dict[str, Any]) -> None:
        ensure_dir(self.dir)
        atomic_write_json(self.file, obj)

    def update_slot(self, slot: str, info: dict[str, Any] | None, result: dict[str, Any] | None = None) -> None:
        """One atomic write for a slot record and, optionally, the last result."""
        obj = self.load()
        if info is None:
            obj["slots"].pop(slot, None)
        else:
            obj["slots"][slot] = info
        if result is not None:
            obj["last_result"] = result
        self.save(obj)

    def set_result(self, result: dict[str, Any]) -> None:
        obj = self.load()
        obj["last_result"] = result
        self.save(obj)

    def known_crls(self) -> list[x509.CertificateRevocationList]:
        try:
            raw = self.crl_file.read_bytes()[: 1024 * 1024]
        except FileNotFoundError:
            return []
        try:
            return [x509.load_pem_x509_crl(raw)]
        except ValueError:
            return []


class Installer:
    def __init__(
        self,
        *,
        ota_dir: Path,
        keyring: Callable[[], Keyring],
        slots: SlotStore,
        chooser: BootChooser,
        booted: BootedSlotSource,
        rollback: RollbackIndexStore,
        policy: InstallPolicy,
        factory_version: str,
        audit: AuditFn,
        now: Callable[[], dt.datetime],
    ) -> None:
        self.ota_dir = ota_dir
        self._keyring = keyring
        self.slots = slots
        self.chooser = chooser
        self.booted = booted
        self.rollback = rollback
        self.policy = policy
        self.state = OtaState(ota_dir)
        self._factory_version = factory_version
        self._audit = audit
        self._now = now

    # -- helpers --

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        ensure_dir(self.ota_dir)
        fd = os.open(self.ota_dir / "install.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise OtaBusy("another install or mark-good is running", code="ota.busy") from exc
            yield
        finally:
            os.close(fd)

    def boot_state(self) -> BootState:
        state = self.chooser.load()
        if state is None:
            state = bc.initial_state(self.booted.booted(), self.policy.attempts)
            self.chooser.store(state)
        return state

    def slot_info(self, slot: str) -> dict[str, Any]:
        info = self.state.load()["slots"].get(slot)
        if info is None and slot == "A":
            return {"version": self._factory_version, "security_version": None,
                    "state": "good", "origin": "factory"}
        return info or {"state": "empty"}

    def _refuse(self, step: str, reason: str, detail: str, extra: Mapping[str, Any] | None = None) -> OtaRefused:
        outcome = "denied"
        details = {"reason": reason, "detail": detail[:200], **(extra or {})}
        self._audit(f"firmware.{step}", outcome, details)
        self.state.set_result({"outcome": "refused", "reason": reason, "time": self._now().isoformat()})
        return OtaRefused(reason, detail)

    # -- install --

    def install(self, bundle_path: Path, *, source: str = "local") -> InstallResult:
        with self._lock():
            return self._install(bundle_path, source)

    def _install(self, bundle_path: Path, source: str) -> InstallResult:
        try:
            fd = os.open(bundle_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise self._refuse("install", "ota.unreadable", exc.strerror or "cannot open") from exc
        try:
            return self._install_fd(fd, source)
        finally:
            os.close(fd)

    def _install_fd(self, fd: int, source: str) -> InstallResult:
        size = os.fstat(fd).st_size
        self._audit("firmware.install_start", "info", {"source": source, "size": size})

        def pread(offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        def pread_into(buf: memoryview, offset: int) -> int:
            return os.preadv(fd, [buf], offset)

        # The bundle chain (CMS, ASN.1, squashfs, verity) loads with the first update, not with
        # the agent: on the board it is about a second of the start before HTTPS answers.
        from bootverify.bundle.bundle import open_bundle
        from bootverify.bundle.cms import Keyring

        keyring = self._keyring()
        keyring = Keyring(keyring.roots, (*keyring.crls, *self.state.known_crls()))
        try:
            bundle = open_bundle(pread, size, keyring, self._now(), self.policy.limits, pread_into=pread_into)
        except BootVerifyError as exc:
            raise self._refuse("verify", exc.code, exc.message) from exc
        m = bundle.manifest
        self._audit("firmware.verify", "success", {
            "version": m.version, "compatible": m.compatible, "security_version": m.security_version,
            # Every signer of a k-of-n bundle, by subject and serial (rotated signing certificates
            # may share a subject; the serial is what `camera-ota pki revoke` takes).
            "signers": [{"subject": s.subject[:120], "serial": f"{s.serial:x}"} for s in bundle.signers],
            "bundle_sha256": bundle.signature_sha256})
        self._check_policy(bundle)
        entries = []
        for slotclass in self.policy.slot_classes:
            try:
                entries.append(m.image(slotclass))
            except BootVerifyError as exc:
                raise self._refuse("verify", exc.code, exc.message) from exc
        unknown = sorted({i.slotclass for i in m.images} - set(self.policy.slot_classes))
        if unknown:
            raise self._refuse("verify", "ota.unknown_slotclass", f"no slot for image(s) {unknown}")
        if any(e.size is None for e in entries):
            raise self._refuse("verify", "ota.image_size_missing", "manifest gives no image size")

        booted = self.booted.booted()
        target = "B" if booted == "A" else "A"
        state = self.boot_state()
        bad_state = bc.mark_bad(state, target)
        if bad_state != state:  # already out of the order with no attempts: nothing to write
            self.chooser.store(bad_state)
        self.state.update_slot(target, {"state": "installing", "version": m.version,
                                        "security_version": m.security_version})
        self._audit("firmware.target_bad", "info", {"slot": target})

        written = 0
        for entry in entries:
            written += self._write_image(bundle, entry, target, fd)
        self._audit("firmware.write", "success", {"slot": target, "bytes": written,
                                                  "blocks_verified": bundle.reader.blocks_verified})

        self.state.update_slot(target, {
            "state": "installed", "version": m.version, "security_version": m.security_version,
            "bundle_sha256": bundle.signature_sha256, "images": {e.slotclass: e.sha256 for e in entries},
            "installed_at": self._now().isoformat(), "source": source})
        self.chooser.store(bc.activate(bad_state, target, self.policy.attempts))
        self._set_pending(target)
        self._store_crls(bundle)
        self._audit("firmware.activate", "success", {"slot": target, "attempts": self.policy.attempts})
        # After activation, so "installed" is never reported for a slot that will not boot.
        self.state.set_result({"outcome": "installed", "slot": target, "version": m.version,
                               "time": self._now().isoformat()})
        return InstallResult(target, m.version, m.security_version, bundle.signature_sha256, written)

    def _write_image(self, bundle: OpenedBundle, entry: ImageEntry, target: str, fd: int) -> int:
        assert entry.size is not None
        from agent.ota.pipeline import write_image

        writer = self.slots.open_for_write(target, entry.size, entry.slotclass)
        try:
            written = write_image(bundle, entry, writer, bundle_fd=fd)
            writer.finish()
        except BootVerifyError as exc:
            writer.abort()
            self.state.update_slot(target, {"state": "bad", "reason": exc.code})
            raise self._refuse("write", exc.code, exc.message,
                               {"slot": target, "image": entry.slotclass}) from exc
        except OSError as exc:
            writer.abort()
            self.state.update_slot(target, {"state": "bad", "reason": "ota.write_failed"})
            self._audit("firmware.write", "failure", {"slot": target, "image": entry.slotclass,
                                                      "error": str(exc)[:200]})
            raise OtaError("writing the slot failed", code="ota.write_failed") from exc
        except OtaError:
            writer.abort()
            raise
        return written

    def _check_policy(self, bundle: OpenedBundle) -> None:
        m = bundle.manifest
        if m.compatible != self.policy.compatible:
            raise self._refuse("policy", "ota.incompatible", f"bundle is for {m.compatible[:64]!r}")
        try:
            index = self.rollback.read()
        except OtaStateError as exc:  # fail closed: an unreadable counter is not "0"
            raise self._refuse("policy", exc.code, exc.message) from exc
        if m.security_version < index:
            raise self._refuse("rollback_blocked", "ota.rollback_blocked",
                               f"security version {m.security_version} < rollback index {index}",
                               {"security_version": m.security_version, "rollback_index": index,
                                "version": m.version})
        running = str(self.slot_info(self.booted.booted()).get("version", ""))
        if m.min_version and running and version_key(running) < version_key(m.min_version):
            raise self._refuse("policy", "ota.min_version", f"running {running} < min-version {m.min_version}")
        if (not self.policy.allow_version_downgrade and running
                and version_key(m.version) < version_key(running)):
            raise self._refuse("policy", "ota.version_downgrade", f"{m.version} is older than running {running}")

    def _store_crls(self, bundle: OpenedBundle) -> None:
        if not bundle.crls:
            return
        from bootverify.bundle.cms import select_crls  # loaded with the bundle already

        known = self.state.known_crls()
        issuers = [c for s in bundle.signers for c in s.chain[1:]]
        best = select_crls([*known, *bundle.crls], issuers, self._now())
        for crl in best.values():
            if not known or crl.public_bytes(serialization.Encoding.DER) != known[0].public_bytes(
                    serialization.Encoding.DER):
                atomic_write(self.state.crl_file, crl.public_bytes(serialization.Encoding.PEM))
                self._audit("firmware.crl_update", "info", {"issuer": crl.issuer.rfc4514_string()[:120]})
            break

    # -- after boot --

    @property
    def pending_file(self) -> Path:
        """Names the slot activated but not yet confirmed. The board's init reads it: when that
        slot boots and is not confirmed within the deadline it reboots, so U-Boot counts the
        attempt and falls back after ``attempts`` (docs/ota.md, board section)."""
        return self.ota_dir / "pending"

    def _set_pending(self, slot: str | None) -> None:
        if slot is None:
            self.pending_file.unlink(missing_ok=True)
        else:
            atomic_write(self.pending_file, slot.encode() + b"\n")

    def confirm(self, health_check: Callable[[], None] | None = None) -> dict[str, Any]:
        """Mark the booted slot good; raise the rollback index to its security version."""
        with self._lock():
            state = self.boot_state()
            booted = self.booted.booted()
            intended = bc.intended_slot(state)
            info = self.slot_info(booted)
            if booted != intended:
                self._audit("firmware.mark_good", "denied",
                            {"reason": "ota.not_intended_slot", "booted": booted, "intended": intended})
                self.state.set_result({"outcome": "fallback", "booted": booted, "intended": intended,
                                       "time": self._now().isoformat()})
                raise MarkGoodRefused(f"booted slot {booted} is not the intended slot {intended}",
                                      code="ota.not_intended_slot")
            if info.get("state") not in ("installed", "good"):
                self._audit("firmware.mark_good", "denied", {"reason": "ota.slot_not_installed", "slot": booted})
                raise MarkGoodRefused("booted slot holds no complete install", code="ota.slot_not_installed")
            if health_check is not None:
                try:
                    health_check()
                except Exception as exc:
                    self._audit("firmware.mark_good", "denied", {"reason": "ota.health_check", "slot": booted,
                                                                 "error": str(exc)[:200]})
                    raise MarkGoodRefused("health check failed", code="ota.health_check") from exc
            self.chooser.store(bc.mark_good(state, booted, self.policy.attempts))
            self._set_pending(None)
            secver = int(info.get("security_version") or 0)
            before = self.rollback.read()
            after = self.rollback.advance(secver)
            if info.get("state") != "good":
                self.state.update_slot(booted, {**info, "state": "good", "confirmed_at": self._now().isoformat()})
            self._audit("firmware.mark_good", "success", {"slot": booted, "version": info.get("version"),
                                                          "rollback_index": after})
            if after != before:
                self._audit("firmware.rollback_index", "success", {"from": before, "to": after})
            result = {"outcome": "confirmed", "slot": booted, "version": info.get("version"),
                      "time": self._now().isoformat()}
            self.state.set_result(result)
            return result

    def reconcile(self) -> str | None:
        """After boot: if the bootloader fell back (the intended slot used up its attempts and
        another slot booted), record it - the failed slot leaves BOOT_ORDER and is marked bad - so
        the running slot can be confirmed again. Returns the failed slot, if any."""
        with self._lock():
            state = self.boot_state()
            booted = self.booted.booted()
            intended = bc.intended_slot(state)
            if intended is None or intended == booted or state.attempts(intended) > 0:
                return None
            self.chooser.store(bc.mark_bad(state, intended))
            self._set_pending(None)
            info = self.slot_info(intended)
            self.state.update_slot(intended, {**info, "state": "bad", "reason": "ota.boot_failed"})
            self._audit("firmware.fallback", "failure", {"failed_slot": intended, "booted": booted,
                                                         "version": info.get("version")})
            self.state.set_result({"outcome": "fallback", "booted": booted, "intended": intended,
                                   "time": self._now().isoformat()})
            return intended

    def simulate_boot(self) -> str:
        """Host mode: what U-Boot's boot script does at power-on (see bootchooser.select_boot)."""
        from agent.ota.slots import FileBootedSlot

        if not isinstance(self.booted, FileBootedSlot):
            raise OtaError("boot simulation exists only in host mode", code="ota.host_only")
        with self._lock():
            slot, new_state = bc.select_boot(self.boot_state())
            if slot is None:
                raise OtaStateError("no bootable slot", code="ota.no_bootable_slot")
            self.chooser.store(new_state)
            self.booted.record(slot)
            self._audit("firmware.boot", "info", {"slot": slot, "left": new_state.attempts(slot)})
            return slot

    def status(self) -> dict[str, Any]:
        state = self.chooser.load() or bc.initial_state(self.booted.booted(), self.policy.attempts)
        obj = self.state.load()
        booted = self.booted.booted()
        index = self.rollback.read()
        return {
            "booted": booted,
            "intended": bc.intended_slot(state),
            "boot_order": list(state.order),
            "attempts_left": dict(state.left),
            "rollback_index": index,
            # The device's anti-rollback level (same value; the name the API documentation uses).
            "security_version": index,
            "running_version": self.slot_info(booted).get("version"),
            "compatible": self.policy.compatible,
            "slots": {s: {**self.slot_info(s), "booted": s == booted} for s in bc.SLOTS},
            "last_result": obj.get("last_result"),
        }
