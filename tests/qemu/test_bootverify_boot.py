"""`camera-bootverify boot` (attest + firewall in one process, camera-init's boot step) fails
closed: whatever the attestation says, a firewall that cannot be built means a non-zero exit, on
which camera-init halts the board; the attestation record is written first either way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bootverify import cli


def test_boot_writes_record_then_fails_closed_on_bad_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CAMERA_UBOOT_ENV_DIR", str(tmp_path / "no-env"))
    (tmp_path / "data").mkdir()
    # Not an object: the firewall policy cannot be derived, so nothing may be applied (and nft,
    # which would touch this host's tables, is never reached).
    (tmp_path / "data" / "settings.json").write_text("[]")
    rc = cli.main(["boot", "--state-dir", str(tmp_path)])
    assert rc != 0
    record = json.loads((tmp_path / "run" / "boot-attestation.json").read_text())
    # No boot facts on this host: red, with the reasons, not an exception.
    assert record["result"] == "red" and "boot.boot_facts_missing" in record["reasons"]
    out = capsys.readouterr()
    assert "attestation RED" in out.out and "settings.json is not an object" in out.err
