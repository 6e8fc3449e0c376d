"""Assemble the signed A/B disk image of the reference board from Debian arm64 packages.

Buildroot cannot fetch sources on these machines, so this builder takes Debian bookworm's arm64
binaries (kernel, busybox, python3, veritysetup, nftables) plus PyPI's aarch64 wheels and this
project, and calls the same board/ scripts the Buildroot tree calls (genkey, verity, sign-fit,
embed-key, layout). Every step is skipped when its inputs did not change (stamp files), so a
second `make image` / `make run` reuses what was built.

Usage: python -m qemu.build_image [--build build] [--profile release|dev]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qemu.board import BoardRun

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "board"

BOOT_PACKAGES = ("linux-image-arm64", "cryptsetup-bin", "busybox-static")
ROOTFS_PACKAGES = (
    "python3-minimal",
    "libpython3.11-stdlib",
    "python3",
    "libstdc++6",
    "busybox-static",
    "nftables",
    "cryptsetup-bin",
    # No ca-certificates: every TLS peer of the device is pinned or configured with its own CA
    # (OTA pull: SPKI pin; syslog: configured CA), so the public CA store is trust nobody needs -
    # and aiohttp parses it at import (about a second of the board's boot under TCG).
    "tzdata",
)
# What the device runs (camera-agent, camera-bootverify) needs only these distributions; their
# version ranges come from pyproject.toml, so the image and the host venv are tested together.
# The factory station (provisioning/: psycopg, python-pkcs11, segno, Pillow, pyOpenSSL) and the
# release signing tools (bootverify/release/) run on hosts, never on a camera: left out of the
# rootfs, they are neither attack surface nor ~60 MB of every OTA bundle.
DEVICE_DISTRIBUTIONS = ("aiohttp", "cryptography", "av", "argon2-cffi", "asn1crypto")
DEVICE_PACKAGES = ("agent", "bootverify")
HOST_ONLY_SUBPACKAGES = (Path("bootverify/release"),)


def device_requirements(pyproject: Path = ROOT / "pyproject.toml") -> tuple[str, ...]:
    """The pinned requirement strings of ``DEVICE_DISTRIBUTIONS``, as pyproject.toml states them."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    by_name = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower(): d for d in deps}
    missing = [n for n in DEVICE_DISTRIBUTIONS if n not in by_name]
    if missing:
        raise SystemExit(f"pyproject.toml lacks the device dependencies {missing}")
    return tuple(by_name[n] for n in DEVICE_DISTRIBUTIONS)


PIP_REQUIREMENTS = device_requirements()
INITRAMFS_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "dm-verity",
    "squashfs",
    "ext4",
    "crc32c_generic",
)
ROOTFS_MODULES = (
    "virtio_net",
    "virtio-rng",
    "nf_tables",
    "nft_ct",
    "nft_reject_inet",
    "nf_conntrack",
    "gpio_keys",
    "evdev",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nft_limit",
)
# busybox applets linked in the images (busybox --install cannot run on the x86 build host).
INITRAMFS_APPLETS = (
    "sh", "mount", "umount", "mkdir", "cat", "cut", "tr", "awk", "sleep", "echo", "modprobe",
    "switch_root", "reboot", "poweroff", "chmod", "cp", "sync",
)
ROOTFS_APPLETS = (
    "sh", "mount", "umount", "mkdir", "cat", "cut", "tr", "awk", "sleep", "echo", "modprobe",
    "reboot", "poweroff", "chmod", "cp", "sync", "ip", "udhcpc", "hostname", "ls", "ps", "kill",
    "grep", "sed", "rm", "ln", "date", "sysctl", "dmesg", "mountpoint", "head", "tail", "env",
    "uname", "id", "stat", "cttyhack", "setsid", "init", "halt", "wc", "nc", "wget", "true", "false",
    "test", "[", "printf", "chown", "touch", "mv", "df", "free", "top", "netstat", "vi", "less", "mkfifo",
)
DEV_ONLY_APPLETS = ("vi", "less", "top", "wget", "nc")
# The agent's device.model on the board (agent.config.DeviceFacts); bundles must name it.
OTA_COMPATIBLE = "RC-1000"
# Seconds a freshly installed slot has, from the start of camera-init, to pass the agent's health
# check and be confirmed; then camera-init reboots and U-Boot counts the attempt.
CONFIRM_DEADLINE_S = 180


def log(msg: str) -> None:
    print(f"[image] {msg}", flush=True)


def run(*argv: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], check=False, capture_output=True, text=True, env=env, cwd=cwd
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(str(a) for a in argv)}")
    return proc.stdout


def digest(*parts: bytes | str | Path | Iterable[Path]) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            paths: list[Path] = [part]
        elif isinstance(part, (bytes, str)):
            h.update(part.encode() if isinstance(part, str) else part)
            continue
        else:
            paths = list(part)
        for p in paths:
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.is_file() and "__pycache__" not in f.parts:
                        h.update(str(f.relative_to(p)).encode() + b"\0" + f.read_bytes())
            elif p.exists():
                h.update(p.read_bytes())
    return h.hexdigest()[:20]


class Stamp:
    """Skip a step when the digest of its inputs is the one recorded after its last success."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def fresh(self) -> bool:
        return self.path.exists() and self.path.read_text() == self.key

    def done(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.key)


def extract_debs(debdir: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for deb in sorted(debdir.glob("*.deb")):
        run("dpkg-deb", "-x", deb, dest)


def needed_libs(tree: Path, binaries: Iterable[Path]) -> set[Path]:
    """ELF DT_NEEDED closure, resolved inside the arm64 tree (host ldd cannot run arm64)."""
    search = [tree / "lib/aarch64-linux-gnu", tree / "usr/lib/aarch64-linux-gnu", tree / "lib"]
    todo = list(binaries)
    found: set[Path] = set()
    while todo:
        elf = todo.pop()
        out = run("readelf", "-d", elf)
        for name in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out):
            for d in search:
                cand = d / name
                if cand.exists():
                    rel = cand.relative_to(tree)
                    if rel not in found:
                        found.add(rel)
                        todo.append(cand.resolve() if cand.is_symlink() else cand)
                    break
            else:
                raise SystemExit(f"{name} needed by {elf} not found in the arm64 tree")
    return found


def copy_rel(src_tree: Path, rel: Path, dst_tree: Path) -> None:
    """Copy one path keeping symlinks (and what they point to)."""
    src = src_tree / rel
    dst = dst_tree / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        target = os.readlink(src)
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        os.symlink(target, dst)
        resolved = (src.parent / target).resolve()
        copy_rel(src_tree, resolved.relative_to(src_tree.resolve()), dst_tree)
    else:
        shutil.copy2(src, dst)


def module_closure(stage: Path, kver: str, names: Iterable[str]) -> list[str]:
    """Module files (relative to lib/modules/KVER) needed for ``names``, dependencies first."""
    moddir = stage / "lib/modules" / kver
    if not (moddir / "modules.dep").exists():
        run("depmod", "-b", stage, kver)
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        base = Path(path).name.split(".ko")[0]
        by_name[base] = path
        by_name[base.replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps[path]:
            visit(dep)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key not in by_name:
            raise SystemExit(f"kernel module {name} not found")
        visit(by_name[key])
    return order


def install_modules(stage: Path, kver: str, names: Iterable[str], dest: Path) -> list[str]:
    files = module_closure(stage, kver, names)
    moddir = Path("lib/modules") / kver
    for rel in files:
        copy_rel(stage, moddir / rel, dest)
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (stage / moddir / meta).exists():
            copy_rel(stage, moddir / meta, dest)
    run("depmod", "-b", dest, kver)
    return files


def busybox_links(tree: Path, applets: Iterable[str]) -> None:
    for name in applets:
        for d in ("bin", "sbin"):
            (tree / d).mkdir(parents=True, exist_ok=True)
        link = tree / ("sbin" if name in {"modprobe", "switch_root", "reboot", "poweroff", "init",
                                          "halt", "sysctl", "udhcpc"} else "bin") / name
        if not link.exists() and not link.is_symlink():
            os.symlink("/bin/busybox", link)


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of JSON objects (``extra`` wins)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


class Builder:
    """One image: ``variant`` names the output directory (default: the profile), so an update image
    (another version / security version) is built next to the factory image and reuses every
    stamp that does not depend on the version (U-Boot, debs, wheels, boot stage, keys)."""

    def __init__(self, build: Path, profile: str, version: str, security_version: int,
                 factory_ca: Path | None = None, *, variant: str | None = None,
                 agent_overrides: Mapping[str, Any] | None = None,
                 confirm_deadline_s: int = CONFIRM_DEADLINE_S) -> None:
        self.build = build.resolve()
        self.factory_ca = factory_ca
        self.profile = profile
        self.version = version
        self.security_version = security_version
        self.agent_overrides = dict(agent_overrides or {})
        self.confirm_deadline_s = confirm_deadline_s
        self.cache = self.build / "cache"
        self.out = self.build / "image" / (variant or profile)
        self.keys = self.build / "keys"
        self.ota_pki_dir = self.build / "ota-pki"
        self.timings: dict[str, float] = {}

    def _tool(self, script: str, module: str) -> list[str]:
        exe = Path(sys.executable).parent / script
        return [str(exe)] if exe.exists() else [sys.executable, "-m", module]

    def ota_pki(self) -> Path:
        """The release OTA PKI (CMS bundle signing), made once at build time, never committed.
        Its root certificate is the keyring baked into the rootfs."""
        if not (self.ota_pki_dir / "root.pem").exists():
            with self.step("ota-pki"):
                run(*self._tool("camera-ota", "bootverify.release.cli"), "pki", "init", "--dir", self.ota_pki_dir)
        return self.ota_pki_dir

    def agent_config(self) -> bytes:
        """board/rootfs/agent.json (the board's OTA wiring) + this image's version (+ overrides)."""
        cfg = json.loads((BOARD / "rootfs/agent.json").read_text())
        cfg = merge(cfg, {"device": {"firmware_version": self.version}})
        cfg = merge(cfg, self.agent_overrides)
        return json.dumps(cfg, indent=2, sort_keys=True).encode() + b"\n"

    def step(self, name: str) -> _Timer:
        return _Timer(self, name)

    # -- inputs -------------------------------------------------------------------------------
    def uboot(self) -> Path:
        with self.step("u-boot"):
            run(BOARD / "uboot/build.sh", self.build / "uboot")
        return self.build / "uboot/u-boot-nodtb.bin"

    def signing_key(self) -> tuple[Path, str]:
        # Release and dev images are signed with different keys; a release U-Boot trusts only
        # the release key, so a dev FIT cannot boot on a release board.
        name = f"camera-{self.profile}"
        run(BOARD / "genkey.sh", self.keys, name)
        return self.keys, name

    def debs(self) -> tuple[Path, Path]:
        with self.step("fetch-debs"):
            boot = self.cache / "debs-boot"
            rootfs = self.cache / "debs-rootfs"
            for dest, pkgs in ((boot, BOOT_PACKAGES), (rootfs, ROOTFS_PACKAGES)):
                st = Stamp(dest / ".stamp", digest(" ".join(pkgs)))
                if not st.fresh():
                    run(BOARD / "rootfs/fetch-debs.sh", dest, *pkgs)
                    st.done()
        return boot / "debs", rootfs / "debs"

    def wheels(self) -> Path:
        with self.step("fetch-wheels"):
            dest = self.cache / "wheels"
            st = Stamp(self.cache / "wheels.stamp", digest(" ".join(PIP_REQUIREMENTS)))
            if not st.fresh():
                if dest.exists():
                    shutil.rmtree(dest)
                run(
                    sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                    "--python-version", "3.11", "--implementation", "cp",
                    "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
                    "--platform", "manylinux2014_aarch64", "-d", dest, *PIP_REQUIREMENTS,
                )
                st.done()
        return dest

    # -- boot stage ---------------------------------------------------------------------------
    def stage_boot(self, debs: Path) -> tuple[Path, str]:
        stage = self.build / "stage-boot"
        st = Stamp(self.build / "stage-boot.stamp", digest(debs))
        if not st.fresh():
            with self.step("extract-boot"):
                extract_debs(debs, stage)
                st.done()
        kver = next((stage / "lib/modules").iterdir()).name
        return stage, kver

    def rootfs(self, debs: Path, wheels: Path, boot_stage: Path, kver: str) -> tuple[Path, dict[str, str]]:
        img = self.out / "rootfs.squashfs"
        env_file = self.out / "rootfs.verity.env"
        keyring = self.ota_pki() / "root.pem"
        agent_json = self.agent_config()
        inputs = digest(
            debs, wheels, *(ROOT / pkg for pkg in DEVICE_PACKAGES),
            BOARD / "rootfs", BOARD / "verity.sh", Path(__file__), self.profile, self.version,
            " ".join(ROOTFS_MODULES), kver, self.factory_ca or "no-factory-ca", keyring, agent_json,
            str(self.confirm_deadline_s),
        )
        st = Stamp(self.out / "rootfs.stamp", inputs)
        if st.fresh() and img.exists() and env_file.exists():
            return img, _read_env(env_file)
        with self.step("rootfs"):
            tree = self.build / "rootfs-tree" / self.profile
            extract_debs(debs, tree)
            self._trim_rootfs(tree)
            site = tree / "usr/local/lib/python3.11/dist-packages"
            site.mkdir(parents=True, exist_ok=True)
            for whl in sorted(wheels.glob("*.whl")):
                with zipfile.ZipFile(whl) as zf:
                    zf.extractall(site)
            for pkg in DEVICE_PACKAGES:
                shutil.copytree(ROOT / pkg, site / pkg, ignore=shutil.ignore_patterns("__pycache__"))
            for sub in HOST_ONLY_SUBPACKAGES:
                shutil.rmtree(site / sub)
            (tree / "usr/bin/python3").unlink(missing_ok=True)
            os.symlink("python3.11", tree / "usr/bin/python3")
            for script, mod in (
                ("camera-agent", "agent.cli"),
                ("camera-bootverify", "bootverify.cli"),
            ):
                p = tree / "usr/bin" / script
                p.write_text(f"#!/usr/bin/python3 -I\nimport sys\nfrom {mod} import main\nsys.exit(main())\n")
                p.chmod(0o755)
            busybox_links(tree, ROOTFS_APPLETS if self.profile == "dev" else
                          tuple(a for a in ROOTFS_APPLETS if a not in DEV_ONLY_APPLETS))
            install_modules(boot_stage, kver, ROOTFS_MODULES, tree)
            (tree / "usr/lib/camera").mkdir(parents=True, exist_ok=True)
            shutil.copy2(BOARD / "rootfs/powerkey.py", tree / "usr/lib/camera/powerkey.py")
            (tree / "usr/lib/camera/powerkey.py").chmod(0o755)
            shutil.copy2(BOARD / "rootfs/camera-init", tree / "sbin/camera-init")
            (tree / "sbin/camera-init").chmod(0o755)
            for d in ("proc", "sys", "dev", "run", "tmp", "data", "boot-env", "var/lib/camera"):
                (tree / d).mkdir(parents=True, exist_ok=True)
            (tree / "etc/camera").mkdir(parents=True, exist_ok=True)
            if self.factory_ca is not None:
                shutil.copy2(self.factory_ca, tree / "etc/camera/factory-ca.pem")
            (tree / "etc/camera/profile").write_text(self.profile + "\n")
            (tree / "etc/camera/modules").write_text("\n".join(ROOTFS_MODULES) + "\n")
            shutil.copy2(BOARD / "rootfs/udhcpc.script", tree / "etc/camera/udhcpc.script")
            (tree / "etc/camera/agent.json").write_bytes(agent_json)
            shutil.copy2(keyring, tree / "etc/camera/ota-keyring.pem")
            (tree / "etc/camera/confirm-deadline").write_text(f"{self.confirm_deadline_s}\n")
            (tree / "etc/resolv.conf").unlink(missing_ok=True)
            os.symlink("/run/resolv.conf", tree / "etc/resolv.conf")
            (tree / "etc/hostname").write_text("camera\n")
            (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/false\n")
            (tree / "etc/group").write_text("root:x:0:\n")
            # Root has no password hash at all: there is nothing to log in with.
            (tree / "etc/shadow").write_text("root:!*:19000::::::\n")
            (tree / "etc/shadow").chmod(0o600)
            (tree / "etc/os-release").write_text(
                f'NAME="Camera firmware"\nVERSION_ID="{self.version}"\nVARIANT_ID="{self.profile}"\n'
            )
            run(
                "python3.11", "-m", "compileall", "-q", "-j", "2", "--invalidation-mode",
                "unchecked-hash", "-s", tree, "-p", "/", tree / "usr/lib/python3.11", site,
            )
            img.parent.mkdir(parents=True, exist_ok=True)
            img.unlink(missing_ok=True)
            run(
                "mksquashfs", tree, img, "-comp", "lz4", "-all-root", "-noappend",
                "-no-progress", "-quiet", "-b", "131072", "-mkfs-time", "0", "-all-time", "0",
            )
            run(BOARD / "verity.sh", img, env_file)
            st.done()
        return img, _read_env(env_file)

    @staticmethod
    def _trim_rootfs(tree: Path) -> None:
        for rel in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                    "usr/share/lintian", "var/lib/dpkg", "usr/lib/python3.11/test",
                    "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter",
                    "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/ensurepip"):
            shutil.rmtree(tree / rel, ignore_errors=True)
        # Package manager and debconf are not part of the firmware.
        for pattern in ("usr/bin/dpkg*", "usr/sbin/dpkg*", "usr/bin/debconf*", "usr/bin/py3*"):
            for p in tree.glob(pattern):
                p.unlink()

    def initramfs(self, stage: Path, kver: str, verity_env: dict[str, str]) -> Path:
        out = self.out / "initramfs.cpio.lz4"
        image_env = self.image_env(verity_env)
        st = Stamp(self.out / "initramfs.stamp",
                   digest(BOARD / "initramfs", image_env, kver, " ".join(INITRAMFS_MODULES), Path(__file__)))
        if st.fresh() and out.exists():
            return out
        with self.step("initramfs"):
            with tempfile.TemporaryDirectory(dir=self.build) as tmp:
                tree = Path(tmp)
                for d in ("proc", "sys", "dev", "root", "etc/camera", "run", "tmp"):
                    (tree / d).mkdir(parents=True, exist_ok=True)
                copy_rel(stage, Path("bin/busybox"), tree)
                busybox_links(tree, INITRAMFS_APPLETS)
                copy_rel(stage, Path("sbin/veritysetup"), tree)
                for rel in needed_libs(stage, [stage / "sbin/veritysetup"]):
                    copy_rel(stage, rel, tree)
                copy_rel(stage, Path("lib/ld-linux-aarch64.so.1"), tree)
                install_modules(stage, kver, INITRAMFS_MODULES, tree)
                (tree / "etc/camera/modules").write_text("\n".join(INITRAMFS_MODULES) + "\n")
                (tree / "etc/camera/image.env").write_text(image_env)
                shutil.copy2(BOARD / "initramfs/init", tree / "init")
                (tree / "init").chmod(0o755)
                files = run("find", ".", "-mindepth", "1", cwd=tree)
                listing = "\n".join(sorted(files.split())) + "\n"
                raw = subprocess.run(
                    ["cpio", "-o", "-H", "newc", "--reproducible", "-R", "0:0", "--quiet"],
                    input=listing.encode(), capture_output=True, cwd=tree, check=True,
                ).stdout
                (self.out / "initramfs.cpio").write_bytes(raw)
                out.unlink(missing_ok=True)
                run("lz4", "-l", "-9", "-q", self.out / "initramfs.cpio", out)
            st.done()
        return out

    def image_env(self, verity_env: dict[str, str]) -> str:
        facts = dict(verity_env)
        facts["CAMERA_SECURITY_VERSION"] = str(self.security_version)
        facts["CAMERA_FIRMWARE_VERSION"] = self.version
        facts["CAMERA_PROFILE"] = self.profile
        for k, v in facts.items():
            if not re.fullmatch(r"[A-Za-z0-9._+-]+", v):
                raise SystemExit(f"unsafe value for {k}")
        return "".join(f"{k}={v}\n" for k, v in sorted(facts.items()))

    def fit(self, stage: Path, kver: str, initramfs: Path) -> Path:
        out = self.out / "slot.itb"
        keydir, keyname = self.signing_key()
        kernel = stage / "boot" / f"vmlinuz-{kver}"
        st = Stamp(self.out / "fit.stamp", digest(kernel, initramfs, BOARD / "sign-fit.sh", keyname,
                                                  keydir / f"{keyname}.crt"))
        if st.fresh() and out.exists():
            return out
        with self.step("fit-sign"):
            run(BOARD / "sign-fit.sh", keydir, keyname, kernel, initramfs, out)
            st.done()
        return out

    def firmware(self, nodtb: Path) -> Path:
        """u-boot.bin with the control DTB (dumped from QEMU's board) and the key appended."""
        out = self.out / "u-boot.bin"
        keydir, keyname = self.signing_key()
        st = Stamp(self.out / "uboot-bin.stamp", digest(nodtb, BOARD / "embed-key.sh",
                                                       keydir / f"{keyname}.crt", Path(ROOT / "qemu/board.py")))
        if st.fresh() and out.exists():
            return out
        with self.step("u-boot-key"):
            with tempfile.TemporaryDirectory(dir=self.build) as tmp:
                dtb = Path(tmp) / "board.dtb"
                disk = Path(tmp) / "empty.img"
                disk.write_bytes(b"\0" * 1048576)
                argv = BoardRun(bios=nodtb, disk=disk).argv(dumpdtb=dtb)
                run(*argv)
                run(BOARD / "embed-key.sh", nodtb, dtb, keydir, keyname, out, self.out / "control.dtb")
            st.done()
        return out

    def disk(self, fit: Path, rootfs: Path) -> Path:
        out = self.out / "disk.img"
        st = Stamp(self.out / "disk.stamp", digest(fit, rootfs, BOARD / "layout.sh"))
        if st.fresh() and out.exists():
            return out
        with self.step("layout"):
            # Both slots start with the same image: B is the fallback until the first update.
            run(BOARD / "layout.sh", out, fit, fit, rootfs, rootfs)
            st.done()
        return out

    def bundle(self, fit: Path, rootfs: Path) -> Path:
        """A signed update bundle of this very image (slot classes fit + rootfs), for OEMs and tests."""
        out = self.out / "update.raucb"
        pki = self.ota_pki()
        st = Stamp(self.out / "bundle.stamp", digest(fit, rootfs, self.version, str(self.security_version),
                                                       OTA_COMPATIBLE, pki / "root.pem"))
        if st.fresh() and out.exists():
            return out
        with self.step("bundle"):
            run(*self._tool("camera-ota", "bootverify.release.cli"), "bundle", "--pki", pki,
                "--compatible", OTA_COMPATIBLE, "--version", self.version,
                "--security-version", str(self.security_version),
                "--image", f"fit={fit}", "--image", f"rootfs={rootfs}", "-o", out)
            st.done()
        return out

    def default_factory_ca(self) -> Path:
        """A development factory PKI made locally (once) by the provisioning station's CLI."""
        pki = self.build / "factory-pki"
        if not (pki / "root-ca.pem").exists():
            with self.step("factory-pki"):
                exe = Path(sys.executable).parent / "camera-provision"
                cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "provisioning.cli"]
                run(*cmd, "pki", "init", "--dir", pki)
        return pki / "root-ca.pem"

    def build_all(self, *, disk: bool = True) -> dict[str, object]:
        """The signed image, its update bundle and (``disk``) u-boot.bin + the A/B disk image;
        ``disk=False`` builds what an update needs (FIT, rootfs, bundle) only."""
        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        if self.factory_ca is None:
            self.factory_ca = self.default_factory_ca()
        nodtb = self.uboot()
        boot_debs, rootfs_debs = self.debs()
        wheels = self.wheels()
        stage, kver = self.stage_boot(boot_debs)
        rootfs, verity_env = self.rootfs(rootfs_debs, wheels, stage, kver)
        initramfs = self.initramfs(stage, kver, verity_env)
        fit = self.fit(stage, kver, initramfs)
        bundle = self.bundle(fit, rootfs)
        manifest: dict[str, object] = {
            "profile": self.profile,
            "firmware_version": self.version,
            "security_version": self.security_version,
            "kernel": kver,
            "fit": str(fit),
            "rootfs": str(rootfs),
            "bundle": str(bundle),
            "ota_keyring": str(self.ota_pki_dir / "root.pem"),
            "compatible": OTA_COMPATIBLE,
            "root_hash": verity_env["CAMERA_ROOT_HASH"],
            "fit_sha256": hashlib.sha256(fit.read_bytes()).hexdigest(),
            "key_name": f"camera-{self.profile}",
            "key_dir": str(self.keys),
            "factory_ca": str(self.factory_ca),
        }
        if disk:
            manifest["bios"] = str(self.firmware(nodtb))
            manifest["disk"] = str(self.disk(fit, rootfs))
        manifest["total_s"] = round(time.monotonic() - t0, 2)
        manifest["timings_s"] = {k: round(v, 2) for k, v in self.timings.items()}
        (self.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


class _Timer:
    def __init__(self, builder: Builder, name: str) -> None:
        self.builder, self.name = builder, name

    def __enter__(self) -> None:
        self.t0 = time.monotonic()
        log(f"{self.name} ...")

    def __exit__(self, *exc: object) -> None:
        dt = time.monotonic() - self.t0
        self.builder.timings[self.name] = self.builder.timings.get(self.name, 0.0) + dt
        log(f"{self.name} done in {dt:.1f} s")


def _read_env(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--build", type=Path, default=ROOT / "build")
    ap.add_argument("--profile", choices=("release", "dev"), default="release")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--security-version", type=int, default=1)
    ap.add_argument("--factory-ca", type=Path, help="factory trust anchor baked into the image")
    ap.add_argument("--variant", help="output directory name under build/image (default: the profile); "
                    "use one per version to keep the factory image")
    ap.add_argument("--update-only", action="store_true", help="FIT, rootfs and bundle only (no disk image)")
    args = ap.parse_args(argv)
    manifest = Builder(args.build, args.profile, args.version, args.security_version,
                       args.factory_ca, variant=args.variant).build_all(disk=not args.update_only)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
