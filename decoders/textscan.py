"""Vectorised scanning of delimited ASCII text held in one numpy byte buffer.

Text formats such as HJ 212 carry their values as ``key=value`` items between ``;`` and ``,``.
Scanning them with a regex costs a Python object per item; these helpers find the items, cut
their parts into fixed-width byte matrices, intern them and parse decimals for a whole batch
with numpy, so the per-item cost is a few vector operations.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
ByteMatrix = npt.NDArray[np.uint8]

_MAX_DIGITS = 15  # an integer mantissa of ≤ 15 digits is exact in a float64


def first_at_or_after(marks: IntArray, starts: IntArray, missing: int) -> IntArray:
    """For each start, the first position in sorted ``marks`` that is ≥ it, else ``missing``."""
    padded = np.append(marks, missing)
    return padded[np.searchsorted(marks, starts)]


def cut(buf: ByteMatrix, start: IntArray, length: IntArray, width: int) -> ByteMatrix:
    """``buf[start:start+length]`` of every item as a zero-padded ``n × width`` matrix
    (parts longer than ``width`` are truncated; callers check ``length`` themselves).

    Rows are copied from a sliding-window view of the buffer (one contiguous copy per item)
    rather than gathered byte by byte through an ``n × width`` index matrix."""
    width = max(width, 1)
    if start.shape[0] and int(start.max()) + width > buf.shape[0]:
        buf = np.concatenate([buf, np.zeros(width, dtype=np.uint8)])
    elif buf.shape[0] < width:
        buf = np.concatenate([buf, np.zeros(width - buf.shape[0], dtype=np.uint8)])
    windows = np.lib.stride_tricks.sliding_window_view(buf, width)
    mat: ByteMatrix = windows[start]
    mat[np.arange(width) >= length[:, None]] = 0
    return mat


def intern_rows(mat: ByteMatrix) -> tuple[IntArray, list[bytes]]:
    """Ids of the distinct rows of a zero-padded byte matrix, and those rows as bytes.

    Rows are folded into one 64-bit key and de-duplicated with an integer sort; the fold is
    checked against the rows themselves, and a collision falls back to sorting the bytes.
    """
    n, width = mat.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64), []
    words = -(-width // 8)
    padded = np.zeros((n, words * 8), dtype=np.uint8)
    padded[:, :width] = mat
    lanes = padded.view("<u8")
    key = lanes[:, 0].copy()
    for j in range(1, words):
        key = key * np.uint64(0x9E3779B97F4A7C15) ^ lanes[:, j]
    _, first, ids = np.unique(key, return_index=True, return_inverse=True)
    if not np.array_equal(padded, padded[first][ids]):
        as_bytes = np.ascontiguousarray(padded).view(f"S{words * 8}").ravel()
        _, first, ids = np.unique(as_bytes, return_index=True, return_inverse=True)
    rows = [padded[k].tobytes().rstrip(b"\0") for k in first.tolist()]
    return ids.astype(np.int64), rows


def parse_decimals(
    mat: ByteMatrix, length: IntArray
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Values of ``[+-]digits[.digits]`` texts (≤ 15 digits) and which rows had that form.

    The result equals Python's ``float(text)``: the mantissa is an exact integer and one
    IEEE division by an exact power of ten rounds correctly. Rows whose flag is False
    (exponents, spaces, ``nan``, too many digits, not numbers) are for the caller to parse.
    """
    n, width = mat.shape
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    first = mat[:, 0]
    neg = first == ord("-")
    signed = neg | (first == ord("+"))
    cols = np.arange(width)
    body = (cols >= signed[:, None]) & (cols < length[:, None])
    digit = (mat >= ord("0")) & (mat <= ord("9")) & body
    dot = (mat == ord(".")) & body
    n_dot = dot.sum(axis=1)
    n_digit = digit.sum(axis=1)
    ok = (
        (length <= width)
        & (n_dot <= 1)
        & (n_digit >= 1)
        & (n_digit <= _MAX_DIGITS)
        & ~(body & ~digit & ~dot).any(axis=1)
    )
    mantissa = np.zeros(n, dtype=np.float64)
    for j in range(width):
        d = digit[:, j]
        mantissa = np.where(d, mantissa * 10 + (mat[:, j].astype(np.float64) - ord("0")), mantissa)
    dot_at = np.where(n_dot == 1, dot.argmax(axis=1), length - 1)
    scale = 10.0 ** (length - 1 - dot_at)
    values = mantissa / scale
    values[neg] *= -1
    return values, ok
