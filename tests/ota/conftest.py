from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bootverify.release.pki import Pki
from tests.ota.otakit import bundle, make_image, now


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki") / "release", now=now())


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA the device does not trust (same names, different keys)."""
    return Pki.init(tmp_path_factory.mktemp("pki-other") / "release", now=now())


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image(tmp_path_factory.mktemp("img") / "rootfs.img", 1024 * 1024 + 1234)


@pytest.fixture(scope="session")
def good_bundle(tmp_path_factory: pytest.TempPathFactory, pki: Pki, image: Path) -> Path:
    return bundle(pki, tmp_path_factory.mktemp("bundles") / "good.raucb", image)


@pytest.fixture(scope="session")
def keyring(pki: Pki) -> Path:
    return pki.root_cert_file


def days(n: int) -> dt.timedelta:
    return dt.timedelta(days=n)
