"""No private key, password or setup code in the built artefacts, the device state or the factory DB.

The scan looks for exactly what must not be there: PEM/DER private keys, the raw scalars of the
keys the device really holds (unsealed here only to know what to search for), every setup code the
run printed, and the PKCS#11 PIN. The label directory is the one place the code may appear.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.auth.claim import normalize_code
from agent.identity import provisioned
from agent.identity.provisioned import KeySealer, key_to_der
from provisioning.db import SqliteRepository
from provisioning.pki import StationPki
from provisioning.station import Job, Station
from tests.provisioning.helpers import MODEL, start_device

ROOT = Path(__file__).resolve().parents[2]
_PEM_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
# A literal credential assigned in code: password = "...", pin: '...'. Placeholders in docs are
# written without quotes, so a match is a real hard-coded value.
_CREDENTIAL = re.compile(rb"""(?i)\b(password|passwd|pwd|pin|secret)\b["']?\s*[:=]\s*["'][^"'\s]{4,}["']""")


def _files(root: Path) -> list[tuple[str, bytes]]:
    return [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def _archive_members(path: Path) -> list[tuple[str, bytes]]:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            return [(f"{path.name}:{n}", z.read(n)) for n in z.namelist()]
    with tarfile.open(path) as t:
        out = []
        for m in t.getmembers():
            f = t.extractfile(m) if m.isfile() else None
            if f is not None:
                out.append((f"{path.name}:{m.name}", f.read()))
        return out


def _build_artefacts(tmp: Path) -> list[Path]:
    src = tmp / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "build",
            "__pycache__",
            "*.egg-info",
            ".mypy_cache",
            ".ruff_cache",
            ".pytest_cache",
            ".hypothesis",
            "tests",
        ),
    )
    out = tmp / "dist"
    out.mkdir()
    # build_meta rewrites sys.argv while it runs: take the output directory first.
    code = (
        "import sys\nfrom setuptools import build_meta as b\nout = sys.argv[1]\n"
        "b.build_wheel(out)\nb.build_sdist(out)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return sorted(out.iterdir())


@pytest.mark.slow
async def test_no_secrets_anywhere(tmp_path: Path, shared_pki: Path) -> None:
    repo = SqliteRepository(tmp_path / "factory.db")
    station = Station(StationPki.load(shared_pki, "station-1"), repo)
    labels = tmp_path / "labels"
    devices = []
    for i in range(3):
        dev = await start_device(tmp_path / f"dev{i}", shared_pki / "root-ca.pem", f"SCAN{i:04d}")
        await station.provision(Job(f"SCAN{i:04d}", MODEL), "127.0.0.1", dev.port, labels)
        devices.append(dev)
    repo.close()

    needles: dict[str, bytes] = {}
    for dev in devices:
        record = provisioned.load(dev.state)
        assert record is not None
        sealer = KeySealer(dev.secret)
        for kind, blob in (("idevid", record.sealed_idevid_key), ("tls", record.sealed_tls_key)):
            key = sealer.unseal(kind, record.serial, blob)
            needles[f"{record.serial}/{kind}/scalar"] = key.private_numbers().private_value.to_bytes(32, "big")
            needles[f"{record.serial}/{kind}/pkcs8"] = key_to_der(key)
            needles[f"{record.serial}/{kind}/pem"] = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )[40:90]
    for job_file in labels.glob("*.json"):
        code = json.loads(job_file.read_bytes())["setup_code"]
        needles[f"code {job_file.stem}"] = code.encode()
        needles[f"code {job_file.stem} (normalized)"] = normalize_code(code).encode()
    assert len([n for n in needles if n.startswith("code")]) == 6

    scanned: list[tuple[str, bytes]] = [("factory.db", (tmp_path / "factory.db").read_bytes())]
    for extra in tmp_path.glob("factory.db-*"):  # noqa: ASYNC240
        scanned.append((extra.name, extra.read_bytes()))
    for dev in devices:
        scanned += _files(dev.state.root)
    artefacts = _build_artefacts(tmp_path)
    assert {p.suffix for p in artefacts} >= {".whl", ".gz"}
    built: list[tuple[str, bytes]] = []
    for art in artefacts:
        built += _archive_members(art)
    assert any(name.endswith("provisioning/station.py") for name, _ in built)
    scanned += built

    hits = []
    for name, data in scanned:
        if _PEM_KEY.search(data):
            hits.append((name, "PEM private key"))
        for label, needle in needles.items():
            if needle in data:
                hits.append((name, label))
    for name, data in built:
        m = _CREDENTIAL.search(data)
        if m:
            hits.append((name, f"credential literal {m.group(0)[:40]!r}"))
    assert hits == []
    # Sanity: the scanner does find a key where one is (the station's own key in the PKI dir).
    assert _PEM_KEY.search((shared_pki / "stations" / "station-1.key").read_bytes())
