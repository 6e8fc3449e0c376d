"""The factory database: one repository interface over SQLite (one station) and PostgreSQL (a line).

What is recorded: serial, MAC, model, firmware version and hash, certificates (public) with their
serials and fingerprints, key fingerprints, station, operator, timestamps, outcome. Never a private
key, never a setup code. Uniqueness is enforced by the database itself, so two stations racing on
one line cannot both win: serial and MAC (devices), certificate serial, certificate fingerprint and
key fingerprint (certificates), and at most one live certificate of each kind per device (a
partial unique index), which is "never two identities for one serial".

Every method is one short transaction; the station calls them from worker threads.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from provisioning.errors import DatabaseError, JobRefused

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS devices (
        serial TEXT PRIMARY KEY,
        mac TEXT NOT NULL UNIQUE,
        model TEXT NOT NULL,
        firmware_version TEXT NOT NULL DEFAULT '',
        firmware_sha256 TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL CHECK (status IN ('in_progress', 'locked')),
        step TEXT NOT NULL,
        station TEXT NOT NULL,
        operator TEXT NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        locked_at DOUBLE PRECISION
    )""",
    """CREATE TABLE IF NOT EXISTS certificates (
        cert_serial TEXT PRIMARY KEY,
        device_serial TEXT NOT NULL REFERENCES devices(serial),
        kind TEXT NOT NULL CHECK (kind IN ('idevid', 'tls')),
        fingerprint TEXT NOT NULL UNIQUE,
        key_fingerprint TEXT NOT NULL UNIQUE,
        not_after TEXT NOT NULL,
        cert_pem TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('issued', 'active', 'revoked')),
        station TEXT NOT NULL,
        issued_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS certificates_one_live
        ON certificates (device_serial, kind) WHERE status <> 'revoked'""",
    """CREATE TABLE IF NOT EXISTS events (
        id {autoinc},
        device_serial TEXT,
        mac TEXT,
        step TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        station TEXT NOT NULL,
        operator TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    )""",
]


@dataclass(frozen=True)
class DeviceRow:
    serial: str
    mac: str
    model: str
    status: str
    step: str
    station: str
    lease_until: float


@dataclass(frozen=True)
class CertRow:
    cert_serial: str
    device_serial: str
    kind: str
    fingerprint: str
    key_fingerprint: str
    not_after: str
    cert_pem: str
    status: str


class _Conn(Protocol):
    def execute(self, sql: str, params: tuple[Any, ...] = ...) -> Any: ...


class Repository:
    """Dialect-neutral logic; subclasses provide ``_tx`` and the integrity-error type."""

    placeholder = "?"
    integrity_errors: tuple[type[BaseException], ...] = ()

    def _tx(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _exec(self, conn: _Conn, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return conn.execute(self._q(sql), params)

    # --- jobs -----------------------------------------------------------------------------------
    def claim_device(
        self,
        serial: str,
        mac: str,
        model: str,
        station: str,
        operator: str,
        now: float,
        lease_s: float,
        firmware_version: str | None = None,
        firmware_sha256: str | None = None,
    ) -> DeviceRow:
        """Start or resume the job for ``serial``. Refuses a serial already locked, a MAC owned by
        another serial, a job another station holds a live lease on."""
        with self._tx() as conn:
            row = self._exec(
                conn,
                self._lock_sql(
                    "SELECT serial, mac, model, status, step, station, lease_until FROM devices WHERE serial = ?"
                ),
                (serial,),
            ).fetchone()
            if row is None:
                other = self._exec(conn, "SELECT serial FROM devices WHERE mac = ?", (mac,)).fetchone()
                if other is not None and other[0] == serial:
                    # Another station inserted this very serial after our first read: a race, not a clone.
                    raise JobRefused(f"serial {serial} is being claimed by another station", code="provision.busy")
                if other is not None:
                    raise JobRefused(f"MAC {mac} already belongs to another serial", code="provision.duplicate_mac")
                try:
                    self._exec(
                        conn,
                        "INSERT INTO devices (serial, mac, model, firmware_version, firmware_sha256, status, step, "
                        "station, operator, lease_until, created_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, 'in_progress', 'claimed', ?, ?, ?, ?, ?)",
                        (
                            serial,
                            mac,
                            model,
                            firmware_version or "",
                            firmware_sha256 or "",
                            station,
                            operator,
                            now + lease_s,
                            now,
                            now,
                        ),
                    )
                except self.integrity_errors as exc:
                    raise JobRefused("serial or MAC taken concurrently", code="provision.busy") from exc
                return DeviceRow(serial, mac, model, "in_progress", "claimed", station, now + lease_s)
            current = DeviceRow(*row)
            if current.status == "locked":
                raise JobRefused(f"serial {serial} is already provisioned", code="provision.duplicate_serial")
            if current.mac != mac:
                raise JobRefused(f"serial {serial} was started with another MAC", code="provision.mac_mismatch")
            if current.model != model:
                raise JobRefused(f"serial {serial} was started with another model", code="provision.model_mismatch")
            if current.station != station and current.lease_until > now:
                raise JobRefused(f"serial {serial} is being provisioned by {current.station}", code="provision.busy")
            self._exec(
                conn,
                "UPDATE devices SET station = ?, operator = ?, lease_until = ?, updated_at = ? WHERE serial = ?",
                (station, operator, now + lease_s, now, serial),
            )
            if firmware_version is not None and firmware_sha256 is not None:
                self._exec(
                    conn,
                    "UPDATE devices SET firmware_version = ?, firmware_sha256 = ? WHERE serial = ?",
                    (firmware_version, firmware_sha256, serial),
                )
            return DeviceRow(serial, mac, model, "in_progress", current.step, station, now + lease_s)

    def _lock_sql(self, sql: str) -> str:
        return sql

    def set_step(self, serial: str, step: str, station: str, now: float) -> None:
        with self._tx() as conn:
            cur = self._exec(
                conn,
                "UPDATE devices SET step = ?, updated_at = ? WHERE serial = ? AND station = ? "
                "AND status = 'in_progress'",
                (step, now, serial, station),
            )
            if cur.rowcount != 1:
                raise JobRefused("job is no longer held by this station", code="provision.lost_lease")

    def get_device(self, serial: str) -> DeviceRow | None:
        with self._tx() as conn:
            row = self._exec(
                conn,
                "SELECT serial, mac, model, status, step, station, lease_until FROM devices WHERE serial = ?",
                (serial,),
            ).fetchone()
            return DeviceRow(*row) if row else None

    # --- certificates ---------------------------------------------------------------------------
    # Constant column lists: every value is a bound parameter, nothing user-supplied is spliced in.
    _CERT_COLS = "cert_serial, device_serial, kind, fingerprint, key_fingerprint, not_after, cert_pem, status"
    _SELECT_CERTS = "SELECT " + _CERT_COLS + " FROM certificates"  # noqa: S608
    _INSERT_CERT = (
        "INSERT INTO certificates (" + _CERT_COLS + ", station, issued_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'issued', ?, ?)"
    )

    def cert_for_key(self, key_fingerprint: str) -> CertRow | None:
        with self._tx() as conn:
            row = self._exec(conn, self._SELECT_CERTS + " WHERE key_fingerprint = ?", (key_fingerprint,)).fetchone()
            return CertRow(*row) if row else None

    def live_certs(self, serial: str) -> list[CertRow]:
        with self._tx() as conn:
            rows = self._exec(
                conn,
                self._SELECT_CERTS + " WHERE device_serial = ? AND status <> 'revoked' ORDER BY kind",
                (serial,),
            ).fetchall()
            return [CertRow(*r) for r in rows]

    def replace_cert(self, row: CertRow, station: str, now: float) -> None:
        """Revoke whatever live certificate of this kind the device had (a key the device no longer
        holds: it was killed and came back with new keys) and record the new one, atomically."""
        with self._tx() as conn:
            self._exec(
                conn,
                "UPDATE certificates SET status = 'revoked' WHERE device_serial = ? AND kind = ? "
                "AND status <> 'revoked'",
                (row.device_serial, row.kind),
            )
            try:
                self._exec(
                    conn,
                    self._INSERT_CERT,
                    (
                        row.cert_serial,
                        row.device_serial,
                        row.kind,
                        row.fingerprint,
                        row.key_fingerprint,
                        row.not_after,
                        row.cert_pem,
                        station,
                        now,
                    ),
                )
            except self.integrity_errors as exc:
                raise JobRefused("certificate or key already recorded", code="provision.duplicate_key") from exc

    def mark_locked(self, serial: str, station: str, now: float) -> None:
        with self._tx() as conn:
            cur = self._exec(
                conn,
                "UPDATE devices SET status = 'locked', step = 'locked', locked_at = ?, updated_at = ? "
                "WHERE serial = ? AND station = ? AND status = 'in_progress'",
                (now, now, serial, station),
            )
            if cur.rowcount != 1:
                raise JobRefused("job is no longer held by this station", code="provision.lost_lease")
            self._exec(
                conn,
                "UPDATE certificates SET status = 'active' WHERE device_serial = ? AND status = 'issued'",
                (serial,),
            )

    # --- events and export ------------------------------------------------------------------------
    def event(
        self,
        serial: str | None,
        mac: str | None,
        step: str,
        outcome: str,
        reason: str | None,
        station: str,
        operator: str,
        now: float,
    ) -> None:
        with self._tx() as conn:
            self._exec(
                conn,
                "INSERT INTO events (device_serial, mac, step, outcome, reason, station, operator, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (serial, mac, step, outcome, reason, station, operator, now),
            )

    def events(self, serial: str | None = None) -> list[dict[str, Any]]:
        with self._tx() as conn:
            sql = "SELECT device_serial, mac, step, outcome, reason, station, operator, at FROM events"
            rows = (
                self._exec(conn, sql + " WHERE device_serial = ? ORDER BY id", (serial,))
                if serial
                else self._exec(conn, sql + " ORDER BY id")
            ).fetchall()
        keys = ("serial", "mac", "step", "outcome", "reason", "station", "operator", "at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def export(self) -> list[dict[str, Any]]:
        """One row per locked device, for integrators: no secrets exist here to leak."""
        with self._tx() as conn:
            devices = self._exec(
                conn,
                "SELECT serial, mac, model, firmware_version, firmware_sha256, station, operator, locked_at "
                "FROM devices WHERE status = 'locked' ORDER BY serial",
            ).fetchall()
            certs = self._exec(
                conn,
                "SELECT device_serial, kind, cert_serial, fingerprint, key_fingerprint, "
                "not_after FROM certificates WHERE status = 'active'",
            ).fetchall()
        by_serial: dict[str, dict[str, Any]] = {}
        for d in devices:
            by_serial[d[0]] = {
                "serial": d[0],
                "mac": d[1],
                "model": d[2],
                "firmware_version": d[3],
                "firmware_sha256": d[4],
                "station": d[5],
                "operator": d[6],
                "locked_at": d[7],
            }
        for c in certs:
            if c[0] in by_serial:
                by_serial[c[0]].update(
                    {
                        f"{c[1]}_cert_serial": c[2],
                        f"{c[1]}_sha256": c[3],
                        f"{c[1]}_key_sha256": c[4],
                        f"{c[1]}_not_after": c[5],
                    }
                )
        return list(by_serial.values())

    def all_certs(self) -> list[CertRow]:
        with self._tx() as conn:
            return [CertRow(*r) for r in self._exec(conn, self._SELECT_CERTS).fetchall()]

    def all_devices(self) -> list[DeviceRow]:
        with self._tx() as conn:
            rows = self._exec(conn, "SELECT serial, mac, model, status, step, station, lease_until FROM devices")
            return [DeviceRow(*r) for r in rows.fetchall()]


class SqliteRepository(Repository):
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path) -> None:
        self._mutex = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._tx() as conn:
            for stmt in _SCHEMA:
                conn.execute(stmt.replace("{autoinc}", "INTEGER PRIMARY KEY AUTOINCREMENT"))
        path.chmod(0o600)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            # IMMEDIATE takes the write lock up front: two stations on one file serialize here
            # instead of failing on a lock upgrade halfway through.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


class PostgresRepository(Repository):
    placeholder = "%s"

    def __init__(self, url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.integrity_errors = (psycopg.errors.IntegrityError,)
        self._mutex = threading.Lock()
        try:
            self._conn = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL: {type(exc).__name__}", code="provision.db_connect"
            ) from exc
        with self._tx() as conn:
            # Two stations starting at once would race on CREATE ... IF NOT EXISTS.
            conn.execute("SELECT pg_advisory_xact_lock(726354)")
            for stmt in _SCHEMA:
                conn.execute(stmt.replace("{autoinc}", "BIGSERIAL PRIMARY KEY"))

    def _lock_sql(self, sql: str) -> str:
        return sql + " FOR UPDATE"

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._mutex, self._conn.transaction():
            yield self._conn

    def close(self) -> None:
        self._conn.close()


def open_repository(url: str) -> Repository:
    """``sqlite:///path``, a bare path, or ``postgresql://...``."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresRepository(url)
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return SqliteRepository(Path(parsed.path))
    if parsed.scheme:
        raise DatabaseError(f"unsupported database URL scheme {parsed.scheme!r}", code="provision.db_url")
    return SqliteRepository(Path(url))
