"""U-Boot environment storage against libubootenv's fw_printenv/fw_setenv; boot selection."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.ota import bootchooser as bc
from agent.ota.errors import OtaStateError
from agent.ota.ubootenv import EnvLocation, UBootEnv, decode, encode
from tests.conftest import need

VARS = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0", "bootcmd": "run distro_bootcmd"}


def test_fw_printenv_reads_ours_and_we_read_fw_setenv(tmp_path: Path) -> None:
    need("fw_printenv", "fw_setenv")
    e1, e2 = tmp_path / "env1", tmp_path / "env2"
    env = UBootEnv(EnvLocation(e1), EnvLocation(e2))
    chooser = bc.UBootEnvChooser(env)
    chooser.store(bc.initial_state("A", 3))
    chooser.store(bc.activate(chooser.load() or bc.initial_state(), "B", 3))
    cfg = tmp_path / "fw_env.config"
    cfg.write_text(f"{e1} 0x0 0x4000\n{e2} 0x0 0x4000\n")
    res = subprocess.run(["fw_printenv", "-c", str(cfg)], capture_output=True, text=True, check=True, timeout=30)
    assert "BOOT_ORDER=B A" in res.stdout and "BOOT_B_LEFT=3" in res.stdout
    # U-Boot-side decrement (what the boot script's saveenv does), then we read it back.
    subprocess.run(["fw_setenv", "-c", str(cfg), "BOOT_B_LEFT", "2"], check=True, timeout=30)
    assert chooser.load() == bc.BootState(("B", "A"), {"A": 3, "B": 2})


def test_torn_copy_falls_back_to_the_other(tmp_path: Path) -> None:
    e1, e2 = tmp_path / "env1", tmp_path / "env2"
    env = UBootEnv(EnvLocation(e1), EnvLocation(e2))
    env.write({"BOOT_ORDER": "A"})
    env.write({"BOOT_ORDER": "B A"})
    # Corrupt the newer copy: the older, intact one must be used, never a mix.
    newer = e2 if decode(e2.read_bytes(), redundant=True)[1] > decode(e1.read_bytes(), redundant=True)[1] else e1
    raw = bytearray(newer.read_bytes())
    raw[10] ^= 0xFF
    newer.write_bytes(bytes(raw))
    assert env.read() == {"BOOT_ORDER": "B A"}  # both copies held the new contents
    other = e1 if newer == e2 else e2
    other.write_bytes(bytes(raw))
    with pytest.raises(OtaStateError):
        env.read()


def test_flags_wrap_around(tmp_path: Path) -> None:
    e1, e2 = tmp_path / "env1", tmp_path / "env2"
    e1.write_bytes(encode({"x": "1"}, 0x4000, redundant=True, flags=254))
    e2.write_bytes(encode({"x": "0"}, 0x4000, redundant=True, flags=253))
    env = UBootEnv(EnvLocation(e1), EnvLocation(e2))
    assert env.read() == {"x": "1"}
    env.write({"x": "2"})  # e2 gets 255, e1 gets 0: the wrapped 0 wins
    assert env.read() == {"x": "2"}
    assert decode(e1.read_bytes(), redundant=True)[1] == 0


def test_update_then_fallback_then_recovery() -> None:
    s = bc.initial_state("A", 3)
    s = bc.activate(bc.mark_bad(s, "B"), "B", 3)
    assert s.order == ("B", "A")
    booted = []
    for _ in range(3):  # B never confirmed
        slot, s = bc.select_boot(s)
        booted.append(slot)
    slot, s = bc.select_boot(s)
    booted.append(slot)
    assert booted == ["B", "B", "B", "A"]
    assert bc.intended_slot(s) == "B"  # mark-good must refuse: booted A is not the intended slot


def test_mark_bad_removes_from_order() -> None:
    s = bc.BootState(("A", "B"), {"A": 3, "B": 3})
    assert bc.mark_bad(s, "B") == bc.BootState(("A",), {"A": 3, "B": 0})
    with pytest.raises(OtaStateError):
        bc.activate(s, "C", 3)
    with pytest.raises(OtaStateError):
        bc.state_from_env({"BOOT_ORDER": "A A"})
    with pytest.raises(OtaStateError):
        bc.state_from_env({"BOOT_ORDER": "A", "BOOT_A_LEFT": "-1"})
