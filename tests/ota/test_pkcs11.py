"""Release signing with the key in a PKCS#11 token (SoftHSM2, created per test run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need
from tests.ota.otakit import make_image

ROOT = Path(__file__).resolve().parents[2]
MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@pytest.fixture
def token(tmp_path: Path) -> dict[str, str]:
    need("softhsm2-util")
    if not Path(MODULE).exists():
        pytest.fail(f"{MODULE} missing (package softhsm2)")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin = os.urandom(8).hex()
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "CAMERA_OTA_PKCS11_PIN": pin, "PYTHONPATH": str(ROOT)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "release", "--pin", pin, "--so-pin",
                    os.urandom(8).hex()], env=env, check=True, capture_output=True, timeout=60)
    # Generate the key inside the token; it never exists outside it.
    code = (
        "import pkcs11, os\n"
        "from pkcs11 import KeyType, Attribute\n"
        "from pkcs11.util.ec import encode_named_curve_parameters\n"
        f"t = pkcs11.lib({MODULE!r}).get_token(token_label='release')\n"
        "with t.open(rw=True, user_pin=os.environ['CAMERA_OTA_PKCS11_PIN']) as s:\n"
        "    p = s.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS:"
        " encode_named_curve_parameters('secp256r1')}, local=True)\n"
        "    p.generate_keypair(store=True, label='signing')\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=60)
    return env


def test_bundle_signed_in_token(tmp_path: Path, token: dict[str, str]) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bootverify.release.cli", *args], env=token, cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)

    pki = tmp_path / "pki"
    assert run("pki", "init", "--dir", str(pki)).returncode == 0
    hsm = ("--pkcs11-module", MODULE, "--pkcs11-token", "release", "--pkcs11-key", "signing")
    res = run("pki", "rotate", "--dir", str(pki), *hsm)
    assert res.returncode == 0, res.stderr
    serial = json.loads(res.stdout)["serial"]
    assert not (pki / f"signing-{serial}.key").exists()  # only the certificate is on disk
    image = make_image(tmp_path / "img", 500_000, seed=2)
    out = tmp_path / "hsm.raucb"
    res = run("bundle", "--pki", str(pki), *hsm, "--compatible", "RC-1000", "--version", "2.0.0",
              "--security-version", "1", "--image", f"rootfs={image}", "-o", str(out))
    assert res.returncode == 0, res.stderr
    res = run("verify", "--keyring", str(pki / "root.pem"), str(out))
    assert res.returncode == 0, res.stderr
    info = json.loads(run("info", "--keyring", str(pki / "root.pem"), str(out)).stdout)
    assert info["signers"][0]["serial"] == serial
    need("rauc")
    rauc = subprocess.run(["rauc", "info", "--keyring", str(pki / "root.pem"), str(out)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert rauc.returncode == 0, rauc.stderr
    # A wrong PIN fails closed.
    token["CAMERA_OTA_PKCS11_PIN"] = "wrong"
    bad = run("bundle", "--pki", str(pki), *hsm, "--compatible", "RC-1000", "--version", "2.0.0",
              "--security-version", "1", "--image", f"rootfs={image}", "-o", str(tmp_path / "y.raucb"))
    assert bad.returncode == 1
    assert json.loads(bad.stderr)["code"] == "release.pkcs11"
    assert not (tmp_path / "y.raucb").exists()
