"""PostgreSQL binary COPY format built from numpy columns, with no per-row Python work.

Format (PostgreSQL docs, "COPY ... Binary Format"): an 11-byte signature, int32 flags, int32
header-extension length; then per row an int16 field count and per field an int32 byte length
(-1 for NULL) followed by the value in the type's binary send format; then an int16 -1 trailer.

How: every row is first laid out at a fixed width in one structured array (each field's length
word plus its value, variable-width fields padded to the column's widest value); a boolean
byte mask then drops the bytes of NULL values and the padding of variable-width values, and
one compress turns the padded rows into the exact stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from decoders.base import Column, ColumnType

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
# timestamptz on the wire: µs since 2000-01-01 00:00:00 UTC; ours are µs since 1970-01-01.
PG_EPOCH_OFFSET_US = 946_684_800_000_000

_WIRE: dict[ColumnType, str] = {
    ColumnType.TIMESTAMPTZ: ">i8",
    ColumnType.INT2: ">i2",
    ColumnType.INT4: ">i4",
    ColumnType.INT8: ">i8",
    ColumnType.FLOAT4: ">f4",
    ColumnType.FLOAT8: ">f8",
    ColumnType.BOOL: "u1",
}


def _varwidth(
    values: npt.NDArray[np.generic], jsonb: bool = False
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Bytes of a text/bytea column as an (n, width) uint8 matrix plus each value's length.

    jsonb's binary form is a version byte (1) followed by the JSON text (jsonb_recv)."""
    if jsonb:
        mat, lens = _varwidth(values)
        out = np.empty((mat.shape[0], mat.shape[1] + 1), dtype=np.uint8)
        out[:, 0] = 1
        out[:, 1:] = mat
        return out, lens + 1
    n = values.shape[0]
    if values.dtype.kind == "S":
        fixed = values.astype(np.bytes_, copy=False)
        lens = np.strings.str_len(fixed).astype(np.int64)
    elif values.dtype.kind == "U":
        fixed = np.strings.encode(values.astype(np.str_, copy=False), "utf-8")
        lens = np.strings.str_len(fixed).astype(np.int64)
    else:  # object array of bytes: trailing NULs are data here, so measure lengths first
        lens = np.fromiter(map(len, values), dtype=np.int64, count=n)
        width = int(lens.max()) if n else 1
        fixed = np.array(list(values), dtype=f"S{max(width, 1)}")
    width = fixed.dtype.itemsize
    return fixed.view(np.uint8).reshape(n, width), lens


def encode_stream(
    columns: Sequence[Column],
    data: Mapping[str, npt.NDArray[np.generic]],
    nulls: Mapping[str, npt.NDArray[np.bool_]] | None = None,
    rows_per_chunk: int = 100_000,
) -> Iterator[bytes]:
    """One binary COPY payload for many rows, in chunks (bounded temporaries): the first
    chunk starts with the signature, the last ends with the trailer."""
    nulls = nulls or {}
    n = int(next(iter(data.values())).shape[0]) if data else 0
    yield SIGNATURE
    for lo in range(0, n, rows_per_chunk):
        part = {k: v[lo : lo + rows_per_chunk] for k, v in data.items()}
        part_nulls = {k: v[lo : lo + rows_per_chunk] for k, v in nulls.items()}
        yield encode_rows(columns, part, part_nulls)[len(SIGNATURE) : -len(TRAILER)]
    yield TRAILER


def encode_rows(
    columns: Sequence[Column],
    data: Mapping[str, npt.NDArray[np.generic]],
    nulls: Mapping[str, npt.NDArray[np.bool_]] | None = None,
) -> bytes:
    """Binary COPY payload (signature, rows, trailer) for ``columns`` taken from ``data``."""
    nulls = nulls or {}
    n = int(next(iter(data.values())).shape[0]) if data else 0
    fields: list[tuple[str, str]] = [("nfields", ">i2")]
    values: list[tuple[str, npt.NDArray[np.generic]]] = []
    drops: list[tuple[int, int, npt.NDArray[np.bool_]]] = []  # (start, width, keep-mask (n, w))
    lengths: list[tuple[str, npt.NDArray[np.int32] | int]] = []
    offset = 2
    for col in columns:
        arr = data[col.name]
        null = nulls.get(col.name)
        if null is not None and not null.any():
            null = None
        if col.type in _WIRE:
            wire = np.dtype(_WIRE[col.type])
            if col.type is ColumnType.TIMESTAMPTZ:
                arr = arr.astype(np.int64) - PG_EPOCH_OFFSET_US
            width = wire.itemsize
            fields += [(f"l_{col.name}", ">i4"), (f"v_{col.name}", wire.str)]
            values.append((f"v_{col.name}", arr))
            if null is None:
                lengths.append((f"l_{col.name}", width))
            else:
                lengths.append((f"l_{col.name}", np.where(null, -1, width).astype(np.int32)))
                drops.append((offset + 4, width, np.broadcast_to(~null[:, None], (n, width))))
        else:
            mat, lens = _varwidth(arr, jsonb=col.type is ColumnType.JSONB)
            width = mat.shape[1]
            fields += [(f"l_{col.name}", ">i4"), (f"v_{col.name}", f"V{width}")]
            values.append((f"v_{col.name}", mat.view(f"V{width}").ravel()))
            keep = np.arange(width)[None, :] < lens[:, None]
            if null is not None:
                lens = np.where(null, -1, lens)
                keep &= ~null[:, None]
            lengths.append((f"l_{col.name}", lens.astype(np.int32)))
            drops.append((offset + 4, width, keep))
        offset += 4 + width
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["nfields"] = len(columns)
    for name, length in lengths:
        rows[name] = length
    for name, arr in values:
        rows[name] = arr
    body = rows.view(np.uint8).reshape(n, offset) if n else np.empty((0, offset), np.uint8)
    if drops:
        mask = np.ones((n, offset), dtype=np.bool_)
        for start, width, keep in drops:
            mask[:, start : start + width] = keep
        payload = body[mask].tobytes()
    else:
        payload = body.tobytes()
    return SIGNATURE + payload + TRAILER
