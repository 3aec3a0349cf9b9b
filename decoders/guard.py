"""A safety net after ``decode_batch``: rows PostgreSQL would refuse move their frame to rejects.

Every decoder checks its own values (decoders/limits.py); ``screen`` checks what came out
against the table declarations, so a decoder's slip (or a third-party decoder's) costs one
frame, not the batch's COPY. Checks, on non-NULL values only, one numpy pass per column:

- TEXT / JSONB: valid UTF-8 without NUL bytes (validated as a byte matrix, not value by value);
- TIMESTAMPTZ: within PostgreSQL's range (int64 extremes are its ±infinity: refused);
- INT2 / INT4 / INT8 held in a wider numpy type: within the column's range;
- FLOAT4 / FLOAT8: finite (PostgreSQL takes NaN and Infinity, but a decoder must reject
  them, decoders/README.md) and, for FLOAT4 held as float64, within float32's range.

A frame with an offending row is rejected (``<kind>: <table>.<column>=<value> …``, the forms
of decoders/limits.py) and all its rows leave every table; its replies are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from core.frames import Decoded, Reject, TableRows
from decoders.base import ColumnType, TableSpec
from decoders.limits import (
    INT_RANGE,
    TS_MAX_US,
    TS_MIN_US,
    not_finite,
    out_of_range,
    text_problem,
)

_INT_TYPE = {ColumnType.INT2: "int16", ColumnType.INT4: "int32", ColumnType.INT8: "int64"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_TEXT_BYTES = 2_000  # under PostgreSQL's btree row limit (~2,704 bytes) with room for a key


def _invalid_utf8(mat: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """The rows of a zero-padded byte matrix that are not valid UTF-8 (RFC 3629 §4), vectorised:
    each lead byte claims its continuation bytes, every continuation byte must be claimed,
    and the second byte of E0, ED, F0 and F4 sequences is range-checked (no overlongs, no
    surrogates, nothing above U+10FFFF)."""
    n = mat.shape[0]
    padded = np.zeros((n, mat.shape[1] + 3), dtype=np.uint8)  # no sequence crosses rows
    padded[:, : mat.shape[1]] = mat
    f = padded.ravel()
    lead2 = (f >= 0xC2) & (f <= 0xDF)
    lead3 = (f & 0xF0) == 0xE0
    lead4 = (f >= 0xF0) & (f <= 0xF4)
    claimed = np.zeros(f.shape, dtype=np.bool_)
    claimed[1:] |= (lead2 | lead3 | lead4)[:-1]
    claimed[2:] |= (lead3 | lead4)[:-2]
    claimed[3:] |= lead4[:-3]
    bad = ((f & 0xC0) == 0x80) != claimed
    bad |= (f == 0xC0) | (f == 0xC1) | (f >= 0xF5)
    nxt = np.append(f[1:], np.uint8(0))
    bad |= ((f == 0xE0) & (nxt < 0xA0)) | ((f == 0xED) & (nxt > 0x9F))
    bad |= ((f == 0xF0) & (nxt < 0x90)) | ((f == 0xF4) & (nxt > 0x8F))
    # the rows of the bad bytes (a reduction along the short row axis costs 10x more)
    result: npt.NDArray[np.int64] = np.unique(np.flatnonzero(bad) // padded.shape[1])
    return result


def _text_rows(values: npt.NDArray[Any]) -> list[tuple[int, str]]:
    """(row, problem) for values that are not NUL-free UTF-8."""
    if values.dtype.kind != "S":  # object arrays (not what decoders produce): one by one
        out = []
        for j, v in enumerate(values.tolist()):
            p = text_problem(v) if isinstance(v, str | bytes) else "is not text"
            if p:
                out.append((j, p))
        return out
    n, width = values.shape[0], values.dtype.itemsize
    if n == 0 or width == 0:
        return []
    mat = np.ascontiguousarray(values).view(np.uint8).reshape(n, width)
    found: list[tuple[int, str]] = []
    # numpy drops trailing NULs of 'S' values: a value really holds a NUL when it has fewer
    # non-NUL bytes than its length (whole-matrix count first, rows only when it differs)
    lengths = np.char.str_len(values)
    if np.count_nonzero(mat) != int(lengths.sum()):
        rows = np.flatnonzero(np.count_nonzero(mat, axis=1) != lengths)
        found += [(j, "contains a NUL byte") for j in rows.tolist()]
    if int(mat.max()) >= 0x80:  # all ASCII in one reduction, the usual case
        found += [(j, "is not valid UTF-8") for j in _invalid_utf8(mat).tolist()]
    return found


def _problems(rows: TableRows, spec: TableSpec) -> list[tuple[int, str]]:
    """(row, reason) for the rows PostgreSQL (or the no-NaN rule) would refuse."""
    found: list[tuple[int, str]] = []
    types = {c.name: c.type for c in spec.columns}
    for name, column in rows.columns.items():
        values: npt.NDArray[Any] = column
        typ = types.get(name)
        if typ is None or len(values) == 0:
            continue
        null = rows.nulls.get(name)
        where = f"{spec.name}.{name}"
        bad: npt.NDArray[np.bool_] | None = None
        if typ in (ColumnType.TEXT, ColumnType.JSONB):
            for j, p in _text_rows(values):
                if null is None or not null[j]:
                    found.append((j, f"bad_text: {where} {p}"))
            if values.dtype.kind == "S" and values.dtype.itemsize > MAX_TEXT_BYTES:
                # a unique index row holds at most ~2.7 kB (btree): a longer key is refused
                size = np.char.str_len(values)
                found += [
                    (j, f"too_long: {where} has {int(size[j])} bytes, max {MAX_TEXT_BYTES}")
                    for j in np.flatnonzero(size > MAX_TEXT_BYTES).tolist()
                ]
            continue
        if typ is ColumnType.TIMESTAMPTZ:
            bad = (values < TS_MIN_US) | (values > TS_MAX_US)
            kind = "timestamptz"
        elif typ in _INT_TYPE:
            kind = _INT_TYPE[typ]
            lo, hi = INT_RANGE[kind]
            if values.dtype.kind in "iu":
                info = np.iinfo(values.dtype)
                if info.min >= lo and info.max <= hi:
                    continue  # the numpy type cannot hold anything out of range
            bad = (values < lo) | (values > hi)
        elif typ in (ColumnType.FLOAT4, ColumnType.FLOAT8):
            if values.dtype.kind != "f":
                continue
            bad = ~np.isfinite(values)
            kind = "float4" if typ is ColumnType.FLOAT4 else "float8"
            if typ is ColumnType.FLOAT4 and values.dtype.itemsize > 4:
                bad |= np.abs(values) > _FLOAT32_MAX
        else:
            continue
        if null is not None:
            bad &= ~null
        for j in np.flatnonzero(bad).tolist():
            v = values[j].item()
            if isinstance(v, float) and not np.isfinite(v):
                found.append((j, not_finite(where, v)))
            else:
                found.append((j, out_of_range(where, v, kind)))
    return found


def screen(decoded: Decoded, specs: Mapping[str, TableSpec]) -> Decoded:
    """``decoded`` with every frame that has a row PostgreSQL would refuse moved to rejects.

    Returns ``decoded`` itself when nothing is wrong (the usual case, a few numpy passes)."""
    reasons: dict[int, str] = {}
    already = {r.index for r in decoded.rejects}
    for table, rows in decoded.rows.items():
        spec = specs.get(table)
        if spec is None or len(rows) == 0:
            continue
        for j, reason in _problems(rows, spec):
            reasons.setdefault(int(rows.frame_index[j]), reason)
    stray = already and any(
        np.isin(r.frame_index, list(already)).any() for r in decoded.rows.values()
    )
    if not reasons and not stray:
        return decoded
    drop = np.fromiter((*reasons, *already), dtype=np.int64)
    new_rejects = [Reject(i, why) for i, why in reasons.items() if i not in already]
    return Decoded(
        rows={t: r.take(~np.isin(r.frame_index, drop)) for t, r in decoded.rows.items()},
        rejects=sorted([*decoded.rejects, *new_rejects], key=lambda r: r.index),
        frames_ok=decoded.frames_ok - len(new_rejects),
        replies=[(i, p) for i, p in decoded.replies if i not in reasons],
        numbers=[n.take(~np.isin(n.frame_index, drop)) for n in decoded.numbers],
    )
