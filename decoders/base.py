"""The decoder contract and the declarations of the tables decoders produce."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

import numpy as np

from core.frames import Decoded, FrameBatch


class ColumnType(StrEnum):
    """PostgreSQL column types a decoder may produce, each with a fixed numpy representation."""

    TIMESTAMPTZ = "timestamptz"  # int64 µs since the Unix epoch, UTC
    INT2 = "smallint"
    INT4 = "integer"
    INT8 = "bigint"
    FLOAT4 = "real"
    FLOAT8 = "double precision"
    BOOL = "boolean"
    TEXT = "text"  # numpy bytes (UTF-8), fixed width 'S<n>'
    BYTEA = "bytea"  # numpy object array of bytes
    JSONB = "jsonb"  # numpy bytes holding JSON text (UTF-8)


NUMPY_DTYPE: dict[ColumnType, np.dtype[np.generic]] = {
    ColumnType.TIMESTAMPTZ: np.dtype(np.int64),
    ColumnType.INT2: np.dtype(np.int16),
    ColumnType.INT4: np.dtype(np.int32),
    ColumnType.INT8: np.dtype(np.int64),
    ColumnType.FLOAT4: np.dtype(np.float32),
    ColumnType.FLOAT8: np.dtype(np.float64),
    ColumnType.BOOL: np.dtype(np.bool_),
    ColumnType.TEXT: np.dtype("S1"),
    ColumnType.BYTEA: np.dtype(object),
    ColumnType.JSONB: np.dtype("S1"),
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column: name, type, whether it may be NULL, and what it means (with its unit)."""

    name: str
    type: ColumnType
    nullable: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class HourlyRollup:
    """An hourly continuous aggregate: group by these columns, avg/min/max/count of values."""

    group_by: tuple[str, ...]
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A telemetry table, declared once; storage creates it (hypertable or plain) from this.

    The natural key makes writes idempotent: a redelivered frame yields the same key and is
    stored once. It must contain the time column (TimescaleDB requires the partitioning column
    in every unique index).
    """

    name: str
    columns: tuple[Column, ...]
    natural_key: tuple[str, ...]
    description: str = ""
    time_column: str = "time"
    chunk_interval: str = "1 day"
    compress_after: str = "7 days"
    retain_for: str = "365 days"
    segment_by: str = "device_id"
    hourly: HourlyRollup | None = None

    def column(self, name: str) -> Column:
        """The column called ``name``."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name} has no column {name!r}")

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in declaration (and COPY) order."""
        return tuple(c.name for c in self.columns)


@runtime_checkable
class Decoder(Protocol):
    """A frame format. One module per format in ``decoders/`` exposes one ``DECODER``.

    Contract: ``decode_batch`` does no I/O, is safe to call from any thread, never raises for
    bad input (every bad frame becomes a ``Reject`` with a precise reason), never hangs, and
    returns rows whose ``frame_index`` refers to positions in the given batch. Rows carry the
    external device id in ``TableRows.devices``; ``device_id`` is filled by the registry.
    """

    name: str
    """Registry name, e.g. ``senml-json``; also the last topic level of an MQTT uplink."""
    content_formats: tuple[int, ...]
    """CoAP Content-Format numbers this decoder accepts (RFC 7252 §12.3 registry)."""
    tables: tuple[TableSpec, ...]
    """Tables this decoder may produce rows for."""

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Decode every frame of the batch into typed columns and rejects."""
        ...
