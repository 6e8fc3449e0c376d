"""Labels: a real QR decoder (zbar) reads back exactly the printed facts; files are 0600."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from agent.auth.claim import generate_setup_code
from provisioning import label
from tests.conftest import need

models = st.from_regex(r"[A-Za-z0-9._-]{1,32}", fullmatch=True)
serials = st.from_regex(r"[A-Z0-9]{4,32}", fullmatch=True)


def _decode(png: Path) -> str:
    need("zbarimg")  # deps/apt-provisioning.txt: zbar-tools
    res = subprocess.run(["zbarimg", "-q", "--raw", str(png)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@settings(max_examples=15, deadline=None)
@given(model=models, serial=serials, mac_tail=st.integers(0, 2**24 - 1))
def test_label_qr_decodes(tmp_path_factory: pytest.TempPathFactory, model: str, serial: str, mac_tail: int) -> None:
    mac = "02:00:00:" + ":".join(f"{(mac_tail >> s) & 255:02x}" for s in (16, 8, 0))
    lab = label.Label(model, serial, mac, generate_setup_code())
    out = tmp_path_factory.mktemp("lab")
    paths = label.write(out, serial, label.render(lab))
    assert _decode(paths["png"]) == lab.qr_payload()
    for path in paths.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    img = Image.open(paths["png"])
    assert img.size == (label.WIDTH_PX, label.HEIGHT_PX)
    assert paths["pdf"].read_bytes()[:5] == b"%PDF-"
