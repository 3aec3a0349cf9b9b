"""Migrations and the batch writer against a real PostgreSQL (no TimescaleDB extension)."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from core.frames import FrameBatch, TableRows
from decoders.tables import ALL_TABLES, ENV_READINGS
from storage.ddl import Backend
from storage.dead_letters import DeadLetters
from storage.migrate import MigrationError, TimescaleMode, load_migrations, migrate
from storage.writer import BatchWriter, StorageRejectedError, TableWrite, WriteMethod

T0 = 1_767_225_600_000_000


def _rows(n: int, device_id: int = 1, offset: int = 0) -> TableWrite:
    i = np.arange(n, dtype=np.int64) + offset
    rows = TableRows(
        table="env_readings",
        columns={
            "time": T0 + i * 1_000_000,
            "metric": np.where(i % 2 == 0, b"pm2_5", b"temperature"),
            "value": i / 4,
            "device_id": np.full(n, device_id, dtype=np.int32),
        },
        devices=np.full(n, b"dev", dtype="S3"),
        frame_index=np.arange(n, dtype=np.int32),
    )
    return TableWrite(ENV_READINGS, rows)


def test_migrations_create_plain_tables_with_indexes_and_hourly_view(pg_url: str) -> None:
    assert migrate(pg_url, ALL_TABLES, TimescaleMode.AUTO) is Backend.POSTGRESQL
    assert migrate(pg_url, ALL_TABLES, TimescaleMode.AUTO) is Backend.POSTGRESQL  # idempotent
    with psycopg.connect(pg_url) as conn:
        idx = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'env_readings'"
            )
        }
        views = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.views WHERE table_schema='public' "
                "AND table_name LIKE '%\\_hourly'"
            )
        ]
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert "UNIQUE" in idx["env_readings_natural_key"]
    assert '(device_id, metric, "time")' in idx["env_readings_natural_key"]
    assert "USING brin" in idx["env_readings_time_brin"]
    assert '(device_id, "time" DESC)' in idx["env_readings_device_time"]
    assert sorted(views) == sorted(f"{t.name}_hourly" for t in ALL_TABLES if t.hourly)
    assert versions == [m.version for m in load_migrations()]


def test_require_timescaledb_fails_clearly_without_the_extension(pg_url: str) -> None:
    with pytest.raises(MigrationError, match="no timescaledb extension"):
        migrate(pg_url, ALL_TABLES, TimescaleMode.REQUIRE)


def test_edited_migration_is_refused(pg_url: str) -> None:
    migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
    with pytest.raises(MigrationError, match=r"0001_core\.sql was changed after it was applied"):
        migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)


@pytest.mark.parametrize("method", [WriteMethod.COPY, WriteMethod.INSERT])
async def test_writer_stores_rows_and_a_redelivered_batch_once(
    pg_url: str, method: WriteMethod
) -> None:
    migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)
    writer = BatchWriter(pg_url, method)
    await writer.write([_rows(1001)])
    await writer.write([_rows(10, offset=995)])  # overlaps: 6 stored already, 4 new
    await writer.write([_rows(1001)])  # whole batch again
    await writer.close()
    with psycopg.connect(pg_url) as conn:
        count, total = conn.execute("SELECT count(*), sum(value) FROM env_readings").fetchone()  # type: ignore[misc]
        hourly = conn.execute("SELECT sum(samples) FROM env_readings_hourly").fetchone()
    assert count == 1005
    assert total == pytest.approx(sum(range(1005)) / 4)
    assert hourly == (1005,)
    if method is WriteMethod.COPY:
        assert writer.dedup_fallbacks == 2


async def test_dead_letters_keep_raw_bytes_source_and_reason(pg_url: str) -> None:
    migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)
    batch = FrameBatch("nbiot-env", "mqtt")
    batch.append(b"\x00\x01garbage\x00", "c/up/env/d1/nbiot-env", "d1", "env", T0)
    batch.append(b"", "c/up/env/d2/nbiot-env", "", "env", T0 + 1)
    dead = DeadLetters()
    dead.add(0, "truncated: need 32 bytes, got 10")
    dead.add(1, "truncated: need 32 bytes, got 0")
    writer = BatchWriter(pg_url)
    await writer.write([], dead.columns(batch), dead.nulls(batch))
    await writer.close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT transport, source, decoder, device, reason, payload, "
            "received_at = to_timestamp(%s / 1e6) FROM dead_letters ORDER BY id",
            (T0,),
        ).fetchall()
    assert rows == [
        (
            "mqtt",
            "c/up/env/d1/nbiot-env",
            "nbiot-env",
            "d1",
            "truncated: need 32 bytes, got 10",
            b"\x00\x01garbage\x00",
            True,
        ),
        (
            "mqtt",
            "c/up/env/d2/nbiot-env",
            "nbiot-env",
            None,
            "truncated: need 32 bytes, got 0",
            b"",
            False,
        ),
    ]


async def test_data_the_server_refuses_raises_storage_rejected(pg_url: str) -> None:
    migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)
    tw = _rows(2)
    tw.rows.columns["metric"] = np.array([b"ok", b"bad\xff"])  # invalid UTF-8 for text
    writer = BatchWriter(pg_url)
    with pytest.raises(StorageRejectedError, match="invalid byte sequence"):
        await writer.write([tw])
    await writer.close()


async def test_a_refused_copy_names_its_table_and_row(pg_url: str) -> None:
    migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)
    tw = _rows(5)
    tw.rows.columns["metric"] = np.array([b"a", b"b", b"c", b"bad\xff", b"e"])
    writer = BatchWriter(pg_url)
    with pytest.raises(StorageRejectedError) as err:
        await writer.write([tw])
    await writer.close()
    assert (err.value.table, err.value.row) == ("env_readings", 3)


async def test_a_staging_table_rolled_back_with_its_transaction_is_created_again(
    pg_url: str,
) -> None:
    migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)
    writer = BatchWriter(pg_url)
    await writer.write([_rows(4)])

    async def refuse(conn: object) -> None:
        raise RuntimeError("a later step of the same transaction fails")

    # the redelivered rows take the staging path (CREATE TEMP TABLE), then the rollback
    with pytest.raises(RuntimeError):
        await writer.write([_rows(4)], then=refuse)  # type: ignore[arg-type]
    await writer.write([_rows(6)])  # the staging table again: it must exist
    await writer.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM env_readings").fetchone() == (6,)
    assert writer.dedup_fallbacks == 2


async def test_a_redelivered_frame_is_dead_lettered_once(pg_url: str) -> None:
    migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)
    batch = FrameBatch("hj212", "mqtt")
    batch.append(b"##garbage", "c/up/env/st-1/hj212", "st-1", "env", T0)
    batch.append(b"##other", "c/up/env/st-2/hj212", "st-2", "env", T0)
    dead = DeadLetters()
    dead.add(0, "crc_mismatch expected=1 got=2")
    dead.add(1, "crc_mismatch expected=3 got=4")
    writer = BatchWriter(pg_url)
    await writer.write([], dead.columns(batch), dead.nulls(batch))
    batch.redelivered.append(0)  # after a crash the broker sends frame 0 again (DUP)
    await writer.write(
        [], dead.columns(batch), dead.nulls(batch), dead_once=dead.redelivered(batch)
    )
    await writer.close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT payload, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1")
        assert [(bytes(p), n) for p, n in rows] == [(b"##garbage", 1), (b"##other", 2)]


async def test_dead_letters_keep_nul_and_invalid_utf8_in_their_text_escaped(pg_url: str) -> None:
    migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)
    batch = FrameBatch("coap-env", "coap")
    batch.append(b"x", "/up/env/d\x00ev\udcff", "d\x00ev", "env", T0)
    dead = DeadLetters()
    dead.add(0, "device_id_invalid: d\x00ev")
    writer = BatchWriter(pg_url)
    await writer.write([], dead.columns(batch), dead.nulls(batch))
    await writer.close()
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT source, device, reason FROM dead_letters").fetchone()
    assert row == ("/up/env/d\\x00ev\\udcff", "d\\x00ev", "device_id_invalid: d\\x00ev")
