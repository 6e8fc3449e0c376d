from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.provisioning.helpers import make_pki


@pytest.fixture(scope="session")
def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PKI (file signer) with two stations; tests that alter a PKI make their own."""
    return make_pki(tmp_path_factory.mktemp("pki") / "pki", stations=("station-1", "station-2"))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    from tests.provisioning import pg

    if not pg.available():
        pytest.fail("PostgreSQL 15 binaries missing (initdb, pg_ctl): a broken machine setup")
    with pg.postgres_server() as url:
        yield url


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[str]:
    """A fresh database per test on the shared server."""
    import secrets

    import psycopg

    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
