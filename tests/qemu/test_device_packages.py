"""The camera's rootfs carries what the device runs and nothing of the factory station or the
release signing tools (psycopg, python-pkcs11, segno, Pillow, pyOpenSSL, bootverify/release):
host tools on a camera are attack surface and weight in every OTA bundle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from qemu.build_image import DEVICE_DISTRIBUTIONS, DEVICE_PACKAGES, HOST_ONLY_SUBPACKAGES, device_requirements

ROOT = Path(__file__).resolve().parents[2]
SITE = "usr/local/lib/python3.11/dist-packages"
# Import name -> distribution, for the third-party modules device code may import.
IMPORT_TO_DIST = {"aiohttp": "aiohttp", "cryptography": "cryptography", "av": "av", "argon2": "argon2-cffi",
                  "asn1crypto": "asn1crypto"}
HOST_ONLY_IMPORTS = ("provisioning", "psycopg", "psycopg_binary", "pkcs11", "segno", "PIL", "OpenSSL")


def _third_party_imports() -> dict[str, list[str]]:
    """Top-level third-party modules imported anywhere in the device's packages -> importing files."""
    found: dict[str, list[str]] = {}
    host_only = [ROOT / sub for sub in HOST_ONLY_SUBPACKAGES]
    for pkg in DEVICE_PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if any(f.is_relative_to(h) for h in host_only):
                continue
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for m in mods:
                    top = m.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in DEVICE_PACKAGES:
                        found.setdefault(top, []).append(str(f.relative_to(ROOT)))
    return found


def test_device_code_imports_only_device_distributions() -> None:
    imports = _third_party_imports()
    unknown = {m: files for m, files in imports.items() if m not in IMPORT_TO_DIST}
    assert not unknown, f"device code imports modules the rootfs does not carry: {unknown}"
    assert {IMPORT_TO_DIST[m] for m in imports} == set(DEVICE_DISTRIBUTIONS)


def test_device_requirements_come_from_pyproject() -> None:
    reqs = device_requirements()
    assert [r.split(">")[0].split("<")[0].split("=")[0] for r in reqs] == list(DEVICE_DISTRIBUTIONS)
    assert all(any(op in r for op in "<>=") for r in reqs), reqs  # every one pinned to a range
    bad = Path(__file__).parent / "no-such-pyproject.toml"
    with pytest.raises(FileNotFoundError):
        device_requirements(bad)


@pytest.mark.qemu
@pytest.mark.slow
def test_release_rootfs_has_no_host_tools(release_image: dict[str, object]) -> None:
    listing = subprocess.run(["unsquashfs", "-l", "-d", "", str(release_image["rootfs"])],
                             capture_output=True, text=True, check=True, timeout=120).stdout
    paths = {line.strip().lstrip("/") for line in listing.splitlines() if line.startswith("/")}
    for pkg in DEVICE_PACKAGES:
        assert f"{SITE}/{pkg}/__init__.py" in paths
    for mod in IMPORT_TO_DIST:
        assert f"{SITE}/{mod}/__init__.py" in paths, mod
    for mod in HOST_ONLY_IMPORTS:
        assert not any(p == f"{SITE}/{mod}" or p.startswith(f"{SITE}/{mod}/") for p in paths), mod
    for sub in HOST_ONLY_SUBPACKAGES:
        assert not any(p.startswith(f"{SITE}/{sub}") for p in paths), sub
    assert "usr/bin/camera-agent" in paths and "usr/bin/camera-bootverify" in paths
    assert "usr/bin/camera-provision" not in paths
