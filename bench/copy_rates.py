"""Rows/s of cityflux's batch writer vs a raw binary COPY of the same rows, same database.

Raw: the batches are encoded beforehand (not timed) and COPYed, one transaction per batch,
into the same table with the same unique index: the database's own limit for this table.
Writer: ``BatchWriter.write`` per batch (numpy → binary encoding, savepoint, COPY, commit).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import psycopg

from core.frames import TableRows
from decoders.tables import ALL_TABLES, ENV_READINGS
from storage.migrate import TimescaleMode, migrate
from storage.pgbinary import encode_rows
from storage.writer import BatchWriter, TableWrite

METRICS = np.array(
    [b"temperature", b"humidity", b"pm2_5", b"pm10", b"noise", b"battery", b"rssi", b"status"]
)


def make_batches(rows: int, batch: int, run: int) -> list[TableWrite]:
    """``rows`` env readings in batches: 1,000 devices × 8 metrics, distinct keys per run."""
    out = []
    for start in range(0, rows, batch):
        i = np.arange(start, min(start + batch, rows), dtype=np.int64)
        frame = i // 8
        tr = TableRows(
            table="env_readings",
            columns={
                "time": 1_767_225_600_000_000 + (frame // 1000 + run * 10_000_000) * 60_000_000,
                "device_id": (frame % 1000).astype(np.int32) + 1,
                "metric": METRICS[i % 8],
                "value": (i % 997) * 0.1,
            },
            devices=np.empty(0, dtype="S1"),
            frame_index=frame.astype(np.int32),
        )
        out.append(TableWrite(ENV_READINGS, tr))
    return out


def _reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE env_readings")


def raw_copy_rate(url: str, batches: list[TableWrite]) -> float:
    """Rows/s of pre-encoded binary COPY, one transaction per batch."""
    _reset(url)
    cols = ENV_READINGS.columns
    payloads = [encode_rows(cols, b.rows.columns) for b in batches]
    rows = sum(len(b.rows) for b in batches)
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        for payload in payloads:
            with conn.cursor().copy(
                "COPY env_readings (time, device_id, metric, value) FROM STDIN (FORMAT binary)"
            ) as copy:
                copy.write(payload)
            conn.commit()
        return rows / (time.perf_counter() - start)


async def _writer_rate(url: str, batches: list[TableWrite]) -> float:
    writer = BatchWriter(url)
    await writer.connection()
    rows = sum(len(b.rows) for b in batches)
    start = time.perf_counter()
    for b in batches:
        await writer.write([b])
    elapsed = time.perf_counter() - start
    await writer.close()
    return rows / elapsed


def writer_rate(url: str, batches: list[TableWrite]) -> float:
    """Rows/s through the batch writer, one transaction per batch."""
    _reset(url)
    return asyncio.run(_writer_rate(url, batches))


def encode_rate(batches: list[TableWrite]) -> float:
    """Rows/s of the numpy binary COPY encoder alone (no database)."""
    rows = sum(len(b.rows) for b in batches)
    start = time.perf_counter()
    for b in batches:
        encode_rows(ENV_READINGS.columns, b.rows.columns)
    return rows / (time.perf_counter() - start)


def prepare(url: str) -> None:
    """Create the schema in the bench database."""
    migrate(url, ALL_TABLES, TimescaleMode.OFF)
