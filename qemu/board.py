"""The one place that fixes the QEMU machine of the reference board.

U-Boot's control device tree is dumped from QEMU with exactly these options and embedded in
u-boot.bin; the kernel gets that tree, so the machine must not change between build and run
(a tree dumped with other options makes the kernel crash early).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

QEMU = "qemu-system-aarch64"
# acpi=off: with firmware loaded QEMU otherwise models the power button as an ACPI GED device,
# which a device-tree kernel never sees; without ACPI it is a gpio-keys KEY_POWER on the PL061.
# The CPU: QEMU's ``max`` (ARMv8.x) without pointer authentication and SVE. It has E0PD, so the
# kernel keeps KASLR without KPTI. On cortex-a57, KASLR forces KPTI, whose TTBR switch on every
# kernel entry and exit makes TCG flush its TLB (a syscall cost 5x as much); ``max`` also reports
# CSV2/CSV3, so no Spectre-v2/v3a hardening runs either. PAuth and SVE are off because TCG runs
# them in helper calls; the cortex-a57 had neither. The A/B is in docs/benchmarks-boot.md.
CPU = "max,pauth=off,sve=off"
MACHINE = ("-M", "virt,acpi=off", "-cpu", CPU, "-smp", "2", "-m", "1024")


@dataclass(frozen=True)
class Forward:
    host_port: int
    guest_port: int
    host_addr: str = "127.0.0.1"

    def arg(self) -> str:
        return f"hostfwd=tcp:{self.host_addr}:{self.host_port}-:{self.guest_port}"


@dataclass(frozen=True)
class BoardRun:
    bios: Path
    disk: Path
    forwards: Sequence[Forward] = field(default_factory=tuple)
    extra: Sequence[str] = field(default_factory=tuple)
    snapshot: bool = False
    restrict_net: bool = False
    qmp: Path | None = None
    # The board's entropy source (U-Boot's kaslrseed reads it); False only to test its absence.
    rng: bool = True
    # A tap link instead of user networking, for tests that must reach every guest port (a port
    # scan): the tap ``tap`` lives in network namespace ``netns``, where QEMU then runs too.
    tap: str | None = None
    netns: str | None = None
    # Another QEMU CPU model only to measure it against the board's (bench/boot/ab.py --cpu).
    cpu: str = CPU

    def argv(self, *, dumpdtb: Path | None = None) -> list[str]:
        machine = list(MACHINE)
        machine[machine.index("-cpu") + 1] = self.cpu
        if dumpdtb is not None:
            machine[1] = f"{MACHINE[1]},dumpdtb={dumpdtb}"
        drive = f"if=none,id=hd0,format=raw,file={self.disk},cache=unsafe"
        if self.snapshot:
            drive += ",snapshot=on"
        if self.tap is not None:
            if self.forwards or self.restrict_net:
                raise ValueError("forwards and restrict_net are user-networking options, not for a tap link")
            netdev = f"tap,id=n0,ifname={self.tap},script=no,downscript=no"
        else:
            netdev = "user,id=n0"
            if self.restrict_net:
                netdev += ",restrict=on"
            for fwd in self.forwards:
                netdev += "," + fwd.arg()
        return [
            *(["ip", "netns", "exec", self.netns] if self.netns else []),
            QEMU,
            *machine,
            "-display",
            "none",
            "-no-user-config",
            "-nodefaults",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-bios",
            str(self.bios),
            "-drive",
            drive,
            "-device",
            "virtio-blk-pci,drive=hd0",
            "-netdev",
            netdev,
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
            *(["-device", "virtio-rng-pci"] if self.rng else []),
            *(["-qmp", f"unix:{self.qmp},server=on,wait=off"] if self.qmp else []),
            *self.extra,
        ]
