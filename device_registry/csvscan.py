"""Vectorised reading of simple CSV device lines: a block of the file at a time, with numpy.

A bulk registry file is millions of plain lines (``861000000000001,nbiot-env,Futian,22.5,114``).
Reading them with :mod:`csv` and checking each in Python costs microseconds a line; here a block's
newline and comma positions give every field of every line at once, and the cheap checks
(id characters and length, profile known, status, text lengths, coordinates in range) run
as array operations. A line is *simple* when it is ASCII, has no quote or carriage return,
the header's number of fields and nothing that needs Python (install JSON, a secret to hash,
a credential hash or certificate to check). Every other line — and every simple line that
fails a quick check — goes to the caller's Python path, which produces the exact error
message; so the result is the same as validating every line in Python, only faster
(tests/unit/test_csvscan.py checks that on random files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from decoders.textscan import cut, parse_decimals
from device_registry.ids import ASCII_ID_BYTE

BytesArray = npt.NDArray[np.bytes_]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

TEXT_MAX = 128
ID_MAX = 64
# Fields a simple line must leave empty: each needs Python (JSON, PBKDF2, format checks).
PYTHON_ONLY = (
    *("install", "secret", "credential_hash", "cert_fingerprint"),
    *("oscore_kid", "oscore_secret", "oscore_salt", "psk_identity", "psk_key"),
)


@dataclass(slots=True)
class ScannedBlock:
    """Simple lines that passed the quick checks, as columns; and the lines left for Python."""

    lines: IntArray
    """1-based line number of each simple row."""
    fields: dict[str, BytesArray]
    """Raw field text per header field (``b""`` = empty), one entry per simple row."""
    numbers: dict[str, npt.NDArray[np.float64]]
    """Parsed lat, lon, road_km (NaN = empty) for the simple rows."""
    slow: list[tuple[int, bytes]]
    """(line number, raw line without its newline) of every line Python must read."""


def _field_matrix(
    buf: npt.NDArray[np.uint8], start: IntArray, length: IntArray, width: int
) -> BytesArray:
    mat = cut(buf, start, length, max(width, 1))
    out: BytesArray = np.ascontiguousarray(mat).view(f"S{max(width, 1)}").ravel()
    return out


def _decimal(
    buf: npt.NDArray[np.uint8], start: IntArray, length: IntArray, lo: float, hi: float
) -> tuple[npt.NDArray[np.float64], BoolArray]:
    """Values of a numeric field (NaN where empty) and where the text is a plain decimal in
    range (or empty); other rows are for Python."""
    # a plain decimal of ≤ 15 digits is never longer than 24 characters
    width = min(int(length.max()) if length.shape[0] else 1, 24)
    values, ok = parse_decimals(cut(buf, start, length, max(width, 1)), length)
    empty = length == 0
    ok = (ok & (values >= lo) & (values <= hi)) | empty
    values[empty] = np.nan
    return values, ok


def _member(values: BytesArray, allowed: BytesArray) -> BoolArray:
    """Whether each value is one of the sorted ``allowed`` values (a binary search each)."""
    if allowed.shape[0] == 0:
        return np.zeros(values.shape[0], dtype=np.bool_)
    at = np.minimum(np.searchsorted(allowed, values), allowed.shape[0] - 1)
    found: BoolArray = allowed[at] == values
    return found


def _line_layout(
    buf: npt.NDArray[np.uint8], width: int
) -> tuple[IntArray, IntArray, BoolArray, npt.NDArray[np.int64]]:
    """Line starts and ends (before CR LF or LF), which lines are simple, and the comma
    positions of the simple lines (``simple.sum() × (width - 1)``)."""
    nl = np.flatnonzero(buf == 10)
    n = nl.shape[0]
    starts = np.empty(n, dtype=np.int64)
    starts[0:1] = 0
    starts[1:] = nl[:-1] + 1
    ends = nl.astype(np.int64)
    crlf = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    ends[crlf] -= 1  # a CRLF line ends before its CR (files saved on Windows)
    commas = np.flatnonzero(buf == 44)
    special = np.flatnonzero(_SPECIAL[buf])
    if special.shape[0]:
        line_of = np.searchsorted(nl, special)
        special, line_of = special[special != ends[line_of]], line_of[special != ends[line_of]]
    k = width - 1
    if special.shape[0] == 0 and commas.shape[0] == n * k and (ends > starts).all():
        # the usual block: if every line has exactly k commas, they reshape line by line
        pos = commas.reshape(n, k)
        if k == 0 or ((pos[:, 0] > starts).all() and (pos[:, -1] < ends).all()):
            return starts, ends, np.ones(n, dtype=np.bool_), pos
    line_of_comma = np.searchsorted(nl, commas)
    simple = (np.bincount(line_of_comma, minlength=n) == k) & (ends > starts)
    if special.shape[0]:
        simple[np.unique(np.searchsorted(nl, special))] = False
    pos = commas[simple[line_of_comma]].reshape(int(simple.sum()), k)
    return starts, ends, simple, pos


# quote, carriage return, NUL and non-ASCII bytes make a line one for Python's csv reader (a
# NUL would also pass for padding in the fixed-width id check)
_SPECIAL = np.zeros(256, dtype=np.bool_)
_SPECIAL[[0, 34, 13]] = True
_SPECIAL[0x80:] = True


def scan_block(
    block: bytes,
    first_line: int,
    header: Sequence[str],
    profiles: BytesArray,
) -> ScannedBlock:
    """Read the complete lines of ``block`` (it ends with a newline); line numbers start at
    ``first_line``. ``profiles`` are the known profile names (sorted bytes)."""
    buf = np.frombuffer(block, dtype=np.uint8)
    width = len(header)
    starts, ends, simple, pos = _line_layout(buf, width)
    rows = np.flatnonzero(simple)
    fstart = np.empty((rows.shape[0], width), dtype=np.int64)
    fend = np.empty((rows.shape[0], width), dtype=np.int64)
    fstart[:, 0] = starts[rows]
    fend[:, width - 1] = ends[rows]
    fstart[:, 1:] = pos + 1
    fend[:, :-1] = pos
    flen = fend - fstart
    ok = np.ones(rows.shape[0], dtype=np.bool_)
    fields: dict[str, BytesArray] = {}
    numbers: dict[str, npt.NDArray[np.float64]] = {}
    col = {name: j for j, name in enumerate(header)}
    for name in PYTHON_ONLY:
        if name in col:
            ok &= flen[:, col[name]] == 0
    for j, name in enumerate(header):
        length = flen[:, j]
        if name in PYTHON_ONLY:
            continue
        if name in _RANGES:
            numbers[name], good = _decimal(buf, fstart[:, j], length, *_RANGES[name])
            ok &= good
            continue
        limit = ID_MAX if name == "external_id" else TEXT_MAX
        ok &= length <= limit
        w = int(np.minimum(length, limit).max()) if length.shape[0] else 1
        fields[name] = _field_matrix(buf, fstart[:, j], np.minimum(length, limit), w)
    # lat and lon go together
    lat_empty = flen[:, col["lat"]] == 0 if "lat" in col else np.ones_like(ok)
    lon_empty = flen[:, col["lon"]] == 0 if "lon" in col else np.ones_like(ok)
    ok &= lat_empty == lon_empty
    # external id: 1-64 bytes, none outside the allowed set (padding NULs are not used)
    ids = fields["external_id"]
    ok &= flen[:, col["external_id"]] >= 1
    id_bytes = ids.view(np.uint8).reshape(ids.shape[0], ids.dtype.itemsize)
    ok &= (ASCII_ID_BYTE[id_bytes] | (id_bytes == 0)).all(axis=1)
    if "profile" in fields:
        prof = fields["profile"]
        ok &= (prof == b"") | _member(prof, profiles)
    if "status" in fields:
        ok &= _member(fields["status"], _STATUSES)
    slow_rows = np.concatenate([np.flatnonzero(~simple), rows[~ok]])
    slow_rows.sort()
    slow = [(first_line + r, block[starts[r] : ends[r]]) for r in slow_rows.tolist()]
    return ScannedBlock(
        lines=first_line + rows[ok],
        fields={k: v[ok] for k, v in fields.items()},
        numbers={k: v[ok] for k, v in numbers.items()},
        slow=slow,
    )


_RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0), "road_km": (0.0, 1e6)}
_STATUSES = np.array([b"", b"active", b"disabled"])
