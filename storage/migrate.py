"""Versioned schema migrations, then the declared telemetry tables, on either backend."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources

import psycopg

from decoders.base import TableSpec
from storage.ddl import Backend, table_statements

log = logging.getLogger(__name__)

# Serialises concurrent `cityflux serve` workers migrating the same database.
_LOCK_KEY = 0x63_69_74_79_66  # "cityf"


class TimescaleMode(StrEnum):
    """Whether to use TimescaleDB: when the extension is available, always, or never."""

    AUTO = "auto"
    REQUIRE = "require"
    OFF = "off"


class MigrationError(RuntimeError):
    """The schema could not be brought up to date."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned SQL migration file, ``NNNN_name.sql``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file, to detect an applied migration edited afterwards."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The SQL migrations shipped in ``storage/migrations``, in version order."""
    out = []
    for entry in resources.files("storage.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            out.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(out, key=lambda m: m.version)


def detect_backend(conn: psycopg.Connection[tuple[object, ...]], mode: TimescaleMode) -> Backend:
    """Create the timescaledb extension when wanted and available; say which backend we use."""
    if mode is TimescaleMode.OFF:
        return Backend.POSTGRESQL
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None:
        if mode is TimescaleMode.REQUIRE:
            raise MigrationError(
                "storage.timescaledb = require, but the server has no "
                "timescaledb extension (pg_available_extensions)"
            )
        return Backend.POSTGRESQL
    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    return Backend.TIMESCALEDB


def migrate(conninfo: str, tables: Sequence[TableSpec], mode: TimescaleMode) -> Backend:
    """Apply pending migrations and create the declared tables; return the backend used."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            backend = detect_backend(conn, mode)
            # migrations that differ by backend read this (e.g. 0003's hypertables)
            conn.execute("SELECT set_config('cityflux.backend', %s, true)", (backend.value,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, checksum text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied: dict[int, str] = dict(
                conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            )
            for mig in load_migrations():
                if mig.version in applied:
                    if applied[mig.version] != mig.checksum:
                        raise MigrationError(
                            f"migration {mig.version:04d}_{mig.name}.sql was changed after it "
                            "was applied; add a new migration instead"
                        )
                    continue
                log.info("applying migration %04d_%s", mig.version, mig.name)
                conn.execute(mig.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (mig.version, mig.name, mig.checksum),
                )
        # TimescaleDB refuses continuous aggregates inside a transaction block, so declared
        # tables are created statement by statement; every statement is idempotent, but two
        # processes starting together (the workers of `serve --workers N`) would race on
        # "IF NOT EXISTS" (a unique violation in pg_class): the session holds the lock.
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            for spec in tables:
                for stmt in table_statements(spec, backend):
                    conn.execute(stmt)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    log.info("storage backend: %s (%d telemetry tables)", backend, len(tables))
    return backend
