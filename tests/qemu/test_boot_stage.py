"""Unit tests of bootverify.boot on fixtures: valid, invalid and truncated inputs, attack tables."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bootverify import cli
from bootverify.boot import attestation, facts, firewall
from bootverify.boot.errors import BootStageError, FactsError, FirewallError

ROOT_HASH = "ab" * 32
IMAGE_ENV = (
    f"CAMERA_DATA_BLOCKS=100\nCAMERA_FIRMWARE_VERSION=1.2.0\nCAMERA_HASH_OFFSET=409600\n"
    f"CAMERA_PROFILE=release\nCAMERA_ROOT_HASH={ROOT_HASH}\nCAMERA_SALT={'cd' * 32}\n"
    f"CAMERA_SECURITY_VERSION=3\n"
).encode()
BOOT_FACTS = b"slot=A\nbootconf=conf\nroot_device=/dev/vda4\ncounter=2\nverity_status=verified\n" \
             b"cmdline=console=ttyAMA0 camera.slot=A\ninitramfs_uptime=2.31\n"


def test_image_facts_valid() -> None:
    img = facts.image_facts(IMAGE_ENV)
    assert img.root_hash == ROOT_HASH
    assert img.security_version == 3
    assert img.profile == "release"


@pytest.mark.parametrize(
    "mutation",
    [
        lambda s: s.replace(ROOT_HASH.encode(), b"zz" * 32),          # not hex
        lambda s: s.replace(ROOT_HASH.encode(), b"ab" * 31),          # truncated hash
        lambda s: s.replace(b"CAMERA_PROFILE=release", b"CAMERA_PROFILE=debug"),
        lambda s: s.replace(b"CAMERA_SECURITY_VERSION=3", b"CAMERA_SECURITY_VERSION=-1"),
        lambda s: s + b"CAMERA_ROOT_HASH=" + ROOT_HASH.encode() + b"\n",  # duplicate key
        lambda s: s + b"garbage line\n",
        lambda s: s[: len(s) // 2],                                     # truncated file
        lambda s: s + b"X=" + b"a" * 9000 + b"\n",                     # oversized
        lambda s: s.replace(b"1.2.0", b"1.2.0\x1b[2J"),                # control character
        lambda s: s.replace(b"CAMERA_FIRMWARE_VERSION=1.2.0", "CAMERA_FIRMWARE_VERSION=é".encode()),
    ],
)
def test_image_facts_refuses(mutation: object) -> None:
    with pytest.raises(FactsError):
        facts.image_facts(mutation(IMAGE_ENV))  # type: ignore[operator]


def test_boot_facts_and_cmdline() -> None:
    bf = facts.boot_facts(BOOT_FACTS)
    assert (bf.slot, bf.bootconf, bf.counter, bf.verity_status) == ("A", "conf", 2, "verified")
    assert facts.cmdline_slot("console=ttyAMA0 camera.slot=B quiet") == "B"
    assert facts.cmdline_slot("camera.slot=A camera.slot=B") is None
    assert facts.cmdline_slot("camera.slot=C") is None
    assert facts.cmdline_slot("quiet") is None
    with pytest.raises(FactsError):
        facts.boot_facts(BOOT_FACTS.replace(b"slot=A", b"slot=C"))
    with pytest.raises(FactsError):
        facts.boot_facts(BOOT_FACTS.replace(b"counter=2", b"counter=x"))


def test_bootconf() -> None:
    assert facts.bootconf(b"conf\0") == "conf"
    for bad in (b"", b"\0", b"co nf\0", b"a" * 300, b"conf\0evil\0"):
        with pytest.raises(FactsError):
            facts.bootconf(bad)


def _evidence(**kw: object) -> attestation.Evidence:
    base = attestation.Evidence(
        image=facts.image_facts(IMAGE_ENV),
        boot=facts.boot_facts(BOOT_FACTS),
        cmdline_slot="A",
        kernel_bootconf="conf",
        verity_status="verified",
        counter=2,
        boot_order=("A", "B"),
        boot_left={"A": 2, "B": 3},
        fit_sha256="ef" * 32,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_attestation_green_only_with_all_evidence() -> None:
    rec = attestation.evaluate(_evidence(), now=1000.0)
    assert rec["result"] == "green"
    assert rec["reasons"] == []
    assert rec["rootfs_root_hash"] == ROOT_HASH
    assert rec["fit_configuration"] == "conf"
    assert rec["firmware_sha256"] == "ef" * 32


RED_CASES = [
    ({"verity_status": None}, "boot.verity_not_verified"),
    ({"verity_status": "corrupted"}, "boot.verity_not_verified"),
    ({"kernel_bootconf": None}, "boot.no_bootconf"),
    ({"kernel_bootconf": "other"}, "boot.bootconf_mismatch"),
    ({"cmdline_slot": None}, "boot.no_slot"),
    ({"cmdline_slot": "B", "boot_order": ("B", "A")}, "boot.slot_mismatch"),
    ({"counter": None}, "boot.counter_unreadable"),
    ({"counter": 4}, "boot.rollback"),
    ({"image": None}, "boot.image_facts_missing"),
    ({"boot": None}, "boot.boot_facts_missing"),
    ({"problems": ("boot.image_facts_invalid",)}, "boot.image_facts_invalid"),
]


@pytest.mark.parametrize(("change", "reason"), RED_CASES)
def test_attestation_red(change: dict[str, object], reason: str) -> None:
    rec = attestation.evaluate(_evidence(**change), now=0.0)
    assert rec["result"] == "red"
    assert reason in rec["reasons"]


def test_attestation_yellow() -> None:
    dev = dataclasses.replace(facts.image_facts(IMAGE_ENV), profile="dev")
    rec = attestation.evaluate(_evidence(image=dev), now=0.0)
    assert (rec["result"], rec["reasons"]) == ("yellow", ["boot.dev_profile"])
    rec = attestation.evaluate(_evidence(cmdline_slot="A", boot_order=("B", "A")), now=0.0)
    assert rec["result"] == "yellow" and rec["fallback"] is True
    rec = attestation.evaluate(_evidence(boot_order=None), now=0.0)
    assert rec["result"] == "yellow" and "boot.env_unreadable" in rec["reasons"]


def test_fit_total_size() -> None:
    assert attestation.fit_total_size(b"\xd0\x0d\xfe\xed\x00\x00\x10\x00" + b"\0" * 32) == 4096
    with pytest.raises(ValueError):
        attestation.fit_total_size(b"\x27\x05\x19\x56" + b"\0" * 36)  # legacy uImage magic


SETTINGS = {
    "network": {"https_port": 443, "rtsps_port": 322, "outbound_allow": ["192.0.2.10", "nvr.example"]},
    "time": {"ntp_server": "192.0.2.123"},
    "syslog": {"host": "192.0.2.50", "port": 6514},
    "update": {"server_url": "https://updates.example:8443/camera"},
}


def test_firewall_policy_and_render() -> None:
    pol = firewall.policy_from_settings(SETTINGS, factory_port=8444)
    assert pol.listen_tcp == (443, 322, 8444)
    resolved = {"nvr.example": ["198.51.100.7"], "updates.example": ["203.0.113.9", "2001:db8::9"]}
    text = firewall.render(pol, lambda h: resolved[h], ["10.0.2.3"])
    assert "policy drop" in text
    assert "tcp dport { 443, 322, 8444 } accept" in text
    assert "ip daddr 192.0.2.123 udp dport 123 accept" in text
    assert "ip daddr 192.0.2.50 tcp dport 6514 accept" in text
    assert "ip daddr 203.0.113.9 tcp dport 8443 accept" in text
    assert "ip6 daddr 2001:db8::9 tcp dport 8443 accept" in text
    assert "ip daddr 198.51.100.7 accept" in text
    assert "ip daddr 10.0.2.3 udp dport 53 accept" in text
    assert text.rstrip().endswith("}")
    # No allow-list: nothing but DHCP and replies may leave.
    bare = firewall.render(firewall.policy_from_settings({}), lambda h: [], [])
    assert "daddr" not in bare and "dport 53" not in bare


@pytest.mark.parametrize(
    "settings",
    [
        {"network": {"outbound_allow": ["evil.example; flush ruleset"]}},
        {"network": {"outbound_allow": ['a" accept']}},
        {"network": {"outbound_allow": "192.0.2.1"}},
        {"network": {"outbound_allow": ["192.0.2.1"] * 33}},
        {"network": {"https_port": 0}},
        {"network": {"https_port": True}},
        {"update": {"server_url": "http://plain.example/"}},
        {"syslog": {"host": "x" * 300}},
    ],
)
def test_firewall_refuses_bad_settings(settings: dict[str, object]) -> None:
    with pytest.raises(FirewallError):
        firewall.policy_from_settings(settings)


def test_firewall_unresolvable_host_is_an_error() -> None:
    pol = firewall.policy_from_settings({"network": {"outbound_allow": ["nvr.example"]}})
    with pytest.raises(FirewallError):
        firewall.render(pol, lambda h: [], [])


def test_firewall_ruleset_is_valid_nft(tmp_path: Path) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    if not Path(nft).exists():
        pytest.skip("nft not installed on the host")
    text = firewall.render(firewall.policy_from_settings(SETTINGS), lambda h: ["198.51.100.7"], ["10.0.2.3"])
    path = tmp_path / "rules.nft"
    path.write_text(text)
    proc = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_settings_read_by_root_refuse_links_and_fifos(tmp_path: Path) -> None:
    """Init's firewall re-apply reads the agent's settings.json as root: no symlink is followed
    (it could point at any root-only file) and a FIFO does not hang the boot stage."""
    data = tmp_path / "data"
    data.mkdir()
    target = data / "settings.json"
    assert cli._settings(tmp_path) == {}
    target.write_text('{"network": {"https_port": 8443}}')
    assert cli._settings(tmp_path) == {"network": {"https_port": 8443}}
    secret = tmp_path / "root-only.json"
    secret.write_text("{}")
    target.unlink()
    target.symlink_to(secret)
    with pytest.raises(BootStageError):
        cli._settings(tmp_path)
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(BootStageError):
        cli._settings(tmp_path)
