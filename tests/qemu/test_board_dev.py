"""Dev profile: a console shell exists, is marked, is signed with another key; and from inside the
guest, the production network policy and kernel hardening are checked with the guest's own tools.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qemu import build_image, disk
from qemu.board import BoardRun
from qemu.vm import Guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dev_image(release_image: dict[str, object]) -> dict[str, object]:
    return dict(build_image.Builder(ROOT / "build", "dev", "1.0.0-dev", 1).build_all())


@pytest.fixture
def dev_guest(dev_image: dict[str, object], tmp_path: Path) -> Iterator[Guest]:
    d = disk.clone(Path(str(dev_image["disk"])), tmp_path / "dev.img")
    g = Guest(BoardRun(bios=Path(str(dev_image["bios"])), disk=d), tmp_path / "dev-console.log", deadline_s=400)
    with g:
        yield g


class Listener:
    """A host TCP listener the guest can reach as 10.0.2.2 (QEMU user networking)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _listening(proc_net: str, *, tcp: bool) -> set[int]:
    """Ports of listening TCP (state 0A) or bound UDP sockets from /proc/net/{tcp,udp}[6]."""
    ports = set()
    for line in proc_net.splitlines():
        f = line.split()
        if len(f) < 4 or ":" not in f[1] or f[0] == "sl":
            continue
        port = int(f[1].rsplit(":", 1)[1], 16)
        if (tcp and f[3] == "0A") or (not tcp and f[3] == "07"):
            ports.add(port)
    return ports


def sh(g: Guest, cmd: str, tag: str, timeout: float = 60) -> str:
    start = len(g.output)
    g.send(f"echo {tag}-B; {cmd}; echo {tag}-E\n")
    m = g.wait_for(rf"(?s)\n{tag}-B\r?\n(.*?){tag}-E", timeout, start=start)
    return m.group(1)


def test_dev_console_policy_and_outbound_block(dev_guest: Guest, dev_image: dict[str, object]) -> None:
    g = dev_guest
    g.wait_for(r"DEV PROFILE - console shell enabled", 240)
    m = g.wait_for(r"attestation (GREEN|YELLOW|RED) slot=A reasons=(\S+)\s", 60)
    assert m.group(1) == "YELLOW" and "boot.dev_profile" in m.group(2)
    g.wait_for(r"camera-init: agent started", 120)
    assert sh(g, "cat /proc/sys/kernel/randomize_va_space", "ASLR").strip() == "2"
    # The board's CPU has E0PD, which shields KASLR from EL0 without KPTI (qemu/board.py); KASLR
    # itself stays on (test_kaslr.py), and Meltdown does not apply.
    cpu = sh(g, "dmesg | grep 'CPU features'; cat /sys/devices/system/cpu/vulnerabilities/meltdown", "CPU")
    assert "detected: E0PD" in cpu and "Kernel page table isolation" not in cpu
    assert "Not affected" in cpu
    # No public CA store: the device trusts only the peers it is configured or pinned for.
    assert "ca-certificates.crt" not in sh(g, "ls /etc/ssl/certs 2>&1; ls /usr/share/ca-certificates 2>&1", "CAS")
    # The attestation record names exactly what the build signed and what U-Boot booted.
    raw = sh(g, "cat /data/run/boot-attestation.json", "ATT")
    record = json.loads(raw[raw.index("{"): raw.rindex("}") + 1])
    assert record["rootfs_root_hash"] == dev_image["root_hash"]
    assert record["firmware_sha256"] == dev_image["fit_sha256"]
    assert record["fit_configuration"] == "conf" and record["verity_status"] == "verified"
    assert record["profile"] == "dev" and record["slot"] == "A"
    # Only the TLS services (and the factory port before lock) listen; wait for the agent.
    ports: set[int] = set()
    for _ in range(60):
        ports = _listening(sh(g, "cat /proc/net/tcp /proc/net/tcp6", "NS"), tcp=True)
        if 443 in ports:
            break
        sh(g, "sleep 3", "SL")
    assert 443 in ports and ports <= {443, 322, 8444}, ports
    udp = _listening(sh(g, "cat /proc/net/udp /proc/net/udp6", "NU"), tcp=False)
    assert not udp, udp
    # Least privilege (ETSI EN 303 645 5.6-7): the agent runs as camera with no capability; it
    # owns /data and the inactive slot (B), root keeps the active slot (A).
    status = sh(g, "for p in /proc/[0-9]*; do grep -q camera-agent $p/cmdline 2>/dev/null && "
                   "grep -E '^(Uid|Gid|Groups|CapEff|CapPrm):' $p/status; done", "AGU")
    assert status.count("Uid:") >= 1, status
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            assert value.split() == ["1000"] * 4, status
        elif key in ("CapEff", "CapPrm"):
            assert int(value.strip(), 16) == 0, status
        elif key == "Groups":
            assert value.split() in ([], ["1000"]), status
    owners = sh(g, "stat -c '%n %U %a' /dev/vda2 /dev/vda4 /dev/vda3 /dev/vda5 /data /boot-env /boot-env/*", "OWN")
    found = dict((f.split()[0], f.split()[1:]) for f in owners.splitlines() if f.startswith("/"))
    assert found["/dev/vda2"][0] == "root" and found["/dev/vda4"][0] == "root", owners
    assert found["/dev/vda3"] == ["camera", "600"] and found["/dev/vda5"] == ["camera", "600"], owners
    # The environment partition (U-Boot's stored copies in it) is the OTA boot-chooser's to write.
    env_files = [k for k in found if k.startswith("/boot-env/uboot.env")]
    assert env_files and all(found[k][0] == "camera" for k in [*env_files, "/boot-env", "/data"]), owners
    # The simulated OTP stays root's (bootverify/boot/otp.py): readable by the agent's group, a
    # mount point so the agent, owner of /data, can neither rename nor replace it; the agent's
    # user can read the counter and the secret the boot stage created, and change neither.
    otp = sh(g, "stat -c '%n %U %G %a %s' /data/otp /data/otp/*; grep -c ' /data/otp ' /proc/mounts", "OTP")
    rows = {r.split()[0]: r.split()[1:] for r in otp.splitlines() if r.startswith("/data/otp")}
    assert rows["/data/otp"][:3] == ["root", "camera", "750"], otp
    assert rows["/data/otp/device-secret"] == ["root", "camera", "640", "32"], otp
    assert otp.splitlines()[-1].strip() != "0", f"/data/otp is not a mount point: {otp}"
    probe = "\n".join([
        "import errno, os",
        "os.setgroups([]); os.setgid(1000); os.setuid(1000)",
        "def t(f):",
        "    try:",
        "        f()",
        "        return 'allowed'",
        "    except OSError as e:",
        "        return errno.errorcode[e.errno]",
        "print('AS-CAMERA', len(open('/data/otp/device-secret', 'rb').read()),",
        "      t(lambda: os.rename('/data/otp', '/data/otp.old')),",
        "      t(lambda: open('/data/otp/security-version', 'wb')),",
        "      t(lambda: os.rmdir('/data/otp')))",
    ]).replace("'", '"')
    # One console line: the program travels as a JSON (= Python) string literal inside sh quotes.
    out = sh(g, f"python3 -c 'exec({json.dumps(probe)})'", "CAM")
    assert "AS-CAMERA 32 EBUSY EACCES EBUSY" in out, out
    # Outbound default deny: the host is not on the allow-list.
    lst = Listener()
    try:
        out = sh(g, f"nc -w 3 10.0.2.2 {lst.port} </dev/null; echo rc=$?", "NC1")
        assert lst.accepted == 0, out
        # Control: with the policy table removed the same connection goes through, so the
        # check above measured the firewall, not a broken network.
        sh(g, "nft delete table inet camera_fw", "DEL")
        sh(g, f"nc -w 3 10.0.2.2 {lst.port} </dev/null; echo rc=$?", "NC2")
        for _ in range(20):
            if lst.accepted:
                break
            sh(g, "sleep 0.5", "SL2")
        assert lst.accepted >= 1
    finally:
        lst.close()


def test_release_board_refuses_dev_signed_fit(release_image: dict[str, object], dev_image: dict[str, object],
                                             board_disk: Path, boot: object) -> None:
    disk.write_partition(board_disk, "fit_a", Path(str(dev_image["fit"])).read_bytes())
    g = boot(board_disk)  # type: ignore[operator]
    g.wait_for(r"camera: slot A refused", 90)
    g.wait_for(r"camera: booting slot B", 60)
    attempt_a = g.output.split("camera: booting slot A")[1].split("camera: slot A refused")[0]
    assert "camera-release+ OK" not in attempt_a and "Starting kernel" not in attempt_a, attempt_a[-2000:]
