"""SQL for a declared telemetry table: a TimescaleDB hypertable, or a plain PostgreSQL table.

Both variants have the same columns, the same unique natural key and an ``<name>_hourly``
relation with the same columns, so queries do not depend on the backend.
"""

from __future__ import annotations

from enum import StrEnum

from decoders.base import TableSpec


class Backend(StrEnum):
    """Which storage the tables were created on (logged, and a metric label)."""

    TIMESCALEDB = "timescaledb"
    POSTGRESQL = "postgresql"


def ident(name: str) -> str:
    """A quoted SQL identifier (declared names only; quoting keeps reserved words safe)."""
    return '"' + name.replace('"', '""') + '"'


def lit(text: str) -> str:
    """A quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def create_table(spec: TableSpec) -> list[str]:
    """Statements creating the table and its unique natural key (both backends)."""
    cols = ",\n    ".join(
        f"{ident(c.name)} {c.type.value}{'' if c.nullable else ' NOT NULL'}" for c in spec.columns
    )
    key = ", ".join(ident(c) for c in spec.natural_key)
    stmts = [
        f"CREATE TABLE IF NOT EXISTS {ident(spec.name)} (\n    {cols}\n)",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {ident(spec.name + '_natural_key')} "
        f"ON {ident(spec.name)} ({key})",
    ]
    stmts += [
        f"COMMENT ON COLUMN {ident(spec.name)}.{ident(c.name)} IS {lit(c.description)}"
        for c in spec.columns
        if c.description
    ]
    if spec.description:
        stmts.append(f"COMMENT ON TABLE {ident(spec.name)} IS {lit(spec.description)}")
    return stmts


def _rollup_select(spec: TableSpec, bucket: str) -> str:
    assert spec.hourly is not None
    groups = ", ".join(ident(g) for g in spec.hourly.group_by)
    aggs = ", ".join(
        f"avg({ident(v)}) AS {ident(v + '_avg')}, min({ident(v)}) AS {ident(v + '_min')}, "
        f"max({ident(v)}) AS {ident(v + '_max')}"
        for v in spec.hourly.values
    )
    return (
        f"SELECT {bucket} AS bucket, {groups}, {aggs}, count(*) AS samples "
        f"FROM {ident(spec.name)} GROUP BY 1, {groups}"
    )


def timescaledb_statements(spec: TableSpec) -> list[str]:
    """Hypertable, compression segmented by device, retention and an hourly aggregate."""
    t, tl, time = ident(spec.name), lit(spec.name), ident(spec.time_column)
    stmts = [
        *create_table(spec),
        f"SELECT create_hypertable({tl}, by_range({lit(spec.time_column)}, "
        f"INTERVAL {lit(spec.chunk_interval)}), if_not_exists => TRUE)",
        f"ALTER TABLE {t} SET (timescaledb.compress, "
        f"timescaledb.compress_segmentby = {lit(spec.segment_by)}, "
        f"timescaledb.compress_orderby = {lit(spec.time_column + ' DESC')})",
        f"SELECT add_compression_policy({tl}, INTERVAL {lit(spec.compress_after)}, "
        f"if_not_exists => TRUE)",
        f"SELECT add_retention_policy({tl}, INTERVAL {lit(spec.retain_for)}, "
        f"if_not_exists => TRUE)",
    ]
    if spec.hourly is not None:
        view = spec.name + "_hourly"
        select = _rollup_select(spec, f"time_bucket(INTERVAL '1 hour', {time})")
        stmts += [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {ident(view)} "
            f"WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS "
            f"{select} WITH NO DATA",
            f"SELECT add_continuous_aggregate_policy({lit(view)}, start_offset => INTERVAL "
            f"'3 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL "
            f"'30 minutes', if_not_exists => TRUE)",
        ]
    return stmts


def postgresql_statements(spec: TableSpec) -> list[str]:
    """Plain table with a (device_id, time) index, BRIN on time and an hourly view."""
    t, time = ident(spec.name), ident(spec.time_column)
    stmts = [
        *create_table(spec),
        f"CREATE INDEX IF NOT EXISTS {ident(spec.name + '_device_time')} "
        f"ON {t} ({ident(spec.segment_by)}, {time} DESC)",
        f"CREATE INDEX IF NOT EXISTS {ident(spec.name + '_time_brin')} ON {t} USING brin ({time})",
    ]
    if spec.hourly is not None:
        select = _rollup_select(spec, f"date_trunc('hour', {time})")
        stmts.append(f"CREATE OR REPLACE VIEW {ident(spec.name + '_hourly')} AS {select}")
    return stmts


def table_statements(spec: TableSpec, backend: Backend) -> list[str]:
    """The statements that create ``spec`` on ``backend`` (idempotent)."""
    if backend is Backend.TIMESCALEDB:
        return timescaledb_statements(spec)
    return postgresql_statements(spec)
