"""A port scan of the board from outside (ER-01 2.2 no plaintext services, ETSI EN 303 645 5.6):
nmap scans every TCP port and the usual UDP service ports of the release image while it runs.

QEMU's user networking only reaches forwarded ports, which would make a scan show what the test
forwarded. So the guest gets a tap link in a network namespace this test creates (busybox udhcpd
gives it its lease there), and nmap runs in that namespace: it sees exactly what the guest's
listeners and firewall let through, like a scanner on the camera's LAN.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qemu.board import BoardRun
from qemu.vm import Guest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

HOST_IP, GUEST_IP = "10.0.3.1", "10.0.3.15"
# In factory state (the built image, not yet provisioned) the factory port is open as well.
EXPECTED_TCP = {443, 322, 8444}
# Services cameras commonly expose over UDP: DNS, DHCP, TFTP, NTP, SNMP, syslog, RTSP/RTP, SSDP,
# WS-Discovery (ONVIF), mDNS, and vendor discovery/P2P ports.
UDP_PORTS = "53,67,68,69,123,161,162,514,554,1900,3702,5000,5353,5683,6000,8000,34567,37777,37778"


@dataclass(frozen=True)
class ScanNet:
    ns: str
    tap: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def scan_net(tmp_path: Path) -> Iterator[ScanNet]:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("nmap", "busybox", "ip")):
        pytest.skip("needs root, nmap, busybox and iproute2 (deps/apt-qemu.txt)")
    net = ScanNet(f"camscan{os.getpid()}", "camtap0")
    _ip("netns", "add", net.ns)
    udhcpd = None
    try:
        _ip("netns", "exec", net.ns, "ip", "tuntap", "add", "dev", net.tap, "mode", "tap")
        _ip("-n", net.ns, "addr", "add", f"{HOST_IP}/24", "dev", net.tap)
        _ip("-n", net.ns, "link", "set", net.tap, "up")
        _ip("-n", net.ns, "link", "set", "lo", "up")
        conf = tmp_path / "udhcpd.conf"
        conf.write_text(f"start {GUEST_IP}\nend {GUEST_IP}\ninterface {net.tap}\nmax_leases 1\n"
                        f"lease_file {tmp_path / 'udhcpd.leases'}\noption subnet 255.255.255.0\n"
                        f"option router {HOST_IP}\noption lease 3600\n")
        udhcpd = subprocess.Popen(["ip", "netns", "exec", net.ns, "busybox", "udhcpd", "-f", str(conf)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield net
    finally:
        if udhcpd is not None:
            udhcpd.kill()
            udhcpd.wait(10)
        subprocess.run(["ip", "netns", "del", net.ns], check=False, capture_output=True, timeout=30)


def _nmap(net: ScanNet, *args: str) -> tuple[dict[int, str], dict[str, int]]:
    """nmap's XML report of ``GUEST_IP``: port -> state for the listed ports, and state -> count
    for the ports it folded into ``extraports`` (the large groups, e.g. "filtered")."""
    proc = subprocess.run(["ip", "netns", "exec", net.ns, "nmap", "-n", "-Pn", "-oX", "-", *args, GUEST_IP],
                          capture_output=True, text=True, timeout=600, check=True)
    # nmap's own report, produced in this test: not untrusted input.
    root = ET.fromstring(proc.stdout)  # noqa: S314
    listed = {int(p.attrib["portid"]): state.attrib["state"]
              for p in root.findall("./host/ports/port") if (state := p.find("state")) is not None}
    folded = {e.attrib["state"]: int(e.attrib["count"]) for e in root.findall("./host/ports/extraports")}
    return listed, folded


def test_nmap_finds_only_https_rtsps_and_factory_port(release_image: dict[str, object], board_disk: Path,
                                                      scan_net: ScanNet, tmp_path: Path) -> None:
    board = BoardRun(bios=Path(str(release_image["bios"])), disk=board_disk, tap=scan_net.tap, netns=scan_net.ns)
    with Guest(board, tmp_path / "console.log", deadline_s=900) as g:
        g.wait_for(r"firewall applied \(in: 443,322,8444;", 400)
        g.wait_for(r"RTSPS:\s+rtsps://", 400)  # announced after HTTPS and RTSPS both listen
        # Every TCP port. The firewall drops (no RST), so unanswered ports time out as "filtered";
        # a fast rate keeps that to about a minute. Only SYN-ACKs make a port "open".
        tcp, tcp_folded = _nmap(scan_net, "-sS", "-p-", "--min-rate", "3000", "--max-retries", "1")
        assert len(tcp) + sum(tcp_folded.values()) == 65535, (tcp, tcp_folded)
        assert "open" not in tcp_folded, tcp_folded
        opened = {port for port, state in tcp.items() if state == "open"}
        assert opened <= EXPECTED_TCP, f"unexpected open TCP ports: {sorted(opened - EXPECTED_TCP)}"
        # The expected ones, once more at nmap's normal pace: the scan did reach the guest.
        again, _ = _nmap(scan_net, "-sS", "-p", ",".join(map(str, sorted(EXPECTED_TCP))))
        assert {p for p, s in again.items() if s == "open"} == EXPECTED_TCP, again
        # UDP: nothing answers. With a dropping firewall a silent port is "open|filtered"; only a
        # reply makes it "open".
        udp, udp_folded = _nmap(scan_net, "-sU", "-p", UDP_PORTS, "--max-retries", "1")
        assert len(udp) + sum(udp_folded.values()) == len(UDP_PORTS.split(",")), (udp, udp_folded)
        assert "open" not in udp_folded and not [p for p, s in udp.items() if s == "open"], udp
        assert "camera-init: network up" in g.output
