"""The one U-Boot environment codec and the one anti-rollback counter (bootverify.boot), used by the
boot stage and, through thin adapters, by the OTA installer: byte-identical to mkenvimage, U-Boot's
redundant-copy rule, tamper and truncation, the counter's format and monotonicity."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.ota import ubootenv as ota_env
from agent.ota.antirollback import FileRollbackIndex, check_not_rolled_back
from agent.ota.errors import OtaStateError
from bootverify.boot import rollback, ubootenv
from bootverify.boot.errors import CounterError, EnvCrcError, EnvError, EnvFullError, RollbackError
from tests.conftest import need

VARS = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0", "bootcmd": "run distro_bootcmd"}


@pytest.mark.parametrize("redundant", [False, True])
def test_encode_matches_mkenvimage(tmp_path: Path, redundant: bool) -> None:
    need("mkenvimage")
    src = tmp_path / "env.txt"
    src.write_text("".join(f"{k}={v}\n" for k, v in VARS.items()))
    out = tmp_path / "env.bin"
    subprocess.run(["mkenvimage", "-s", "0x4000", "-p", "0", *(["-r"] if redundant else []), "-o", str(out),
                    str(src)], check=True, timeout=30)
    assert ubootenv.decode(out.read_bytes(), redundant=redundant) == (VARS, 1 if redundant else 0)
    # Entry order is the caller's: the same order as the file gives the same bytes.
    assert ubootenv.encode(VARS, redundant=redundant, flags=1) == out.read_bytes()
    if not redundant:
        assert ubootenv.build_env(VARS) == out.read_bytes()
    # The OTA adapter writes U-Boot's saveenv order (sorted) through the same codec.
    sorted_src = tmp_path / "sorted.txt"
    sorted_src.write_text("".join(f"{k}={v}\n" for k, v in sorted(VARS.items())))
    subprocess.run(["mkenvimage", "-s", "0x4000", "-p", "0", "-o", str(out), str(sorted_src)], check=True, timeout=30)
    assert ota_env.encode(VARS, 0x4000, redundant=False) == out.read_bytes()


def test_roundtrip_tamper_truncation() -> None:
    raw = ubootenv.build_env({"BOOT_ORDER": "B A", "BOOT_A_LEFT": "0", "BOOT_B_LEFT": "3"})
    assert len(raw) == ubootenv.ENV_SIZE
    env = ubootenv.parse_env(raw)
    assert ubootenv.boot_state(env) == (("B", "A"), {"A": 0, "B": 3})
    flipped = bytearray(raw)
    flipped[10] ^= 1
    with pytest.raises(EnvCrcError):
        ubootenv.parse_env(bytes(flipped))
    with pytest.raises(EnvError):
        ubootenv.parse_env(raw[:-1])
    with pytest.raises(EnvFullError):
        ubootenv.encode({"x": "y" * 0x4000})
    for bad in ({"": "1"}, {"a=b": "1"}, {"a": "1\0b=2"}):
        with pytest.raises(EnvError):
            ubootenv.encode(bad)
    # The OTA adapter reports the same failures with its own stable codes.
    with pytest.raises(OtaStateError) as info:
        ota_env.decode(bytes(flipped), redundant=False)
    assert info.value.code == "ota.env_crc"
    # Junk in the counters is read the way U-Boot's decimal flag would refuse it: no attempts.
    assert ubootenv.boot_state({"BOOT_ORDER": "A X B", "BOOT_A_LEFT": "x"}) == (("A", "B"), {"A": 0, "B": 3})


def test_redundant_copy_rules() -> None:
    pick = ubootenv.pick_copy
    assert pick(True, 1, True, 2) == 1
    assert pick(True, 3, True, 2) == 0
    assert pick(True, 255, True, 0) == 1
    assert pick(True, 0, True, 255) == 0
    assert pick(False, 9, True, 0) == 1
    assert pick(True, 0, False, 9) == 0
    with pytest.raises(EnvCrcError):
        pick(False, 0, False, 0)
    old = ubootenv.build_env({"BOOT_ORDER": "A B"}, flags=7)
    new = ubootenv.build_env({"BOOT_ORDER": "B A"}, flags=8)
    assert ubootenv.pick_redundant(old, new) == {"BOOT_ORDER": "B A"}
    assert ubootenv.pick_redundant(new, old) == {"BOOT_ORDER": "B A"}
    wrapped = ubootenv.build_env({"BOOT_ORDER": "B A"}, flags=0)
    top = ubootenv.build_env({"BOOT_ORDER": "A B"}, flags=255)
    assert ubootenv.pick_redundant(top, wrapped) == {"BOOT_ORDER": "B A"}
    torn = bytearray(new)
    torn[100] ^= 0xFF  # power cut in the middle of writing the newer copy
    assert ubootenv.pick_redundant(old, bytes(torn)) == {"BOOT_ORDER": "A B"}
    assert ubootenv.pick_redundant(None, old) == {"BOOT_ORDER": "A B"}
    with pytest.raises(EnvError):
        ubootenv.pick_redundant(bytes(torn), None)


def test_rollback_counter(tmp_path: Path) -> None:
    otp = tmp_path / "otp"
    assert rollback.read_counter(otp) == 0
    assert rollback.raise_to(otp, 4) == 4
    assert rollback.raise_to(otp, 2) == 4  # never lowered
    assert rollback.read_counter(otp) == 4
    assert (otp / "security-version").stat().st_mode & 0o777 == 0o600
    assert otp.stat().st_mode & 0o777 == 0o700
    rollback.check(4, 4)
    rollback.check(5, 4)
    with pytest.raises(RollbackError):
        rollback.check(3, 4)
    with pytest.raises(CounterError):
        rollback.raise_to(otp, -1)
    with pytest.raises(CounterError):
        rollback.raise_to(otp, rollback.MAX_COUNTER + 1)
    # The installer's store is the same file: what one writes the other reads.
    store = FileRollbackIndex(otp)
    assert store.read() == 4
    assert store.advance(6) == 6 and rollback.read_counter(otp) == 6
    with pytest.raises(OtaStateError) as info:
        check_not_rolled_back(5, 6)
    assert info.value.code == "ota.rollback_blocked"
    for junk in (b"4; rm -rf /\n", b"", b"9" * 11, b"1" * 100):
        (otp / "security-version").write_bytes(junk)
        with pytest.raises(CounterError):
            rollback.read_counter(otp)
        with pytest.raises(OtaStateError):  # fail closed, never "counter = 0"
            store.read()
    # Root reads the counter in /data, which the unprivileged agent owns: a symlink (to a file
    # saying 0, or to a FIFO that would block) or a FIFO in its place is tampering, not "0".
    counter = otp / "security-version"
    decoy = tmp_path / "zero"
    decoy.write_bytes(b"0\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for make in (lambda: counter.symlink_to(decoy), lambda: counter.symlink_to(fifo), lambda: os.mkfifo(counter)):
        counter.unlink()
        make()
        with pytest.raises(CounterError):
            rollback.read_counter(otp)
