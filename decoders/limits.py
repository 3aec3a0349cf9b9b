"""What PostgreSQL accepts in a typed column, and the reject reasons for what it does not.

Every decoder checks its values against these limits before it builds numpy columns (a value
numpy cannot hold raises ``OverflowError`` and would take the whole batch down; one that
PostgreSQL refuses would fail the batch's COPY). The reasons share one form, so dead letters
read alike whatever the format (decoders/README.md, "Limits"):

    out_of_range: <field>=<value> (<type>)      an integer or time outside its column's type
    not_finite: <field>=<value>                 NaN or ±Infinity where a number is required
    bad_text: <field> <problem>                 not UTF-8, or a NUL byte, in a TEXT column
    too_deep: <what> nested over <N> levels     nesting beyond the format's depth cap
    too_long: <field> has <N> characters, max <M>   text from a payload over MAX_TEXT

``<field>`` may be qualified by where it is (``record 2: v``) when a frame holds several.
"""

from __future__ import annotations

import math
import re

import numpy as np

# PostgreSQL integer types (docs: "Numeric Types").
INT_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
# PostgreSQL timestamptz: 4713 BC to 294276 AD. src/include/datatype/timestamp.h:
# MIN_TIMESTAMP = -211813488000000000 and END_TIMESTAMP = 9223371331200000000 µs from
# 2000-01-01; shifted here to µs from 1970-01-01 (+946684800000000). The upper end is beyond
# int64, so in an int64 column only its extreme values (PostgreSQL's ±infinity) are refused.
TS_MIN_US = -211_813_488_000_000_000 + 946_684_800_000_000
TS_MAX_US = 2**63 - 2  # int64 max is 'infinity' in PostgreSQL's binary format: not a time
# Text a payload puts in a TEXT column (names, plates, EPCs, device ids) is capped: numpy
# holds a column at its widest value's width, so one 1 MiB name among 40,000 rows would
# need 40 GB. Device ids are at most 64 bytes anyway (the registry's rule).
MAX_TEXT = 256
# Structures nested deeper than this are rejected (SenML needs 2, LwM2M TLV 3, tag reads 2).
MAX_DEPTH = 32


class LimitError(ValueError):
    """A value outside its column's limits; the message is the complete reject reason."""


def out_of_range(field: str, value: object, typ: str) -> str:
    """The reject reason for a value outside its type."""
    return f"out_of_range: {field}={value} ({typ})"


def not_finite(field: str, value: float) -> str:
    """The reject reason for NaN or ±Infinity where a number is required."""
    return f"not_finite: {field}={value}"


def check_int(field: str, value: int, typ: str) -> int:
    """``value`` if it fits the integer type ``typ`` (int16/int32/int64), else LimitError."""
    lo, hi = INT_RANGE[typ]
    if not lo <= value <= hi:
        raise LimitError(out_of_range(field, value, typ))
    return value


def check_time_us(field: str, value: int) -> int:
    """``value`` (µs since the Unix epoch) if PostgreSQL's timestamptz holds it."""
    if not TS_MIN_US <= value <= TS_MAX_US:
        raise LimitError(out_of_range(field, value, "timestamptz"))
    return value


def check_finite(field: str, value: float) -> float:
    """``value`` unless it is NaN or ±Infinity."""
    if not math.isfinite(value):
        raise LimitError(not_finite(field, value))
    return value


def text_problem(value: str | bytes) -> str:
    """Why PostgreSQL would refuse this as TEXT ('' when it would not)."""
    if isinstance(value, str):
        if value.isascii():  # the usual case: no encoding needed
            return "contains a NUL byte" if "\0" in value else ""
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (JSON "\\ud800")
            return "is not valid UTF-8"
    else:
        raw = value
        if not raw.isascii():
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return "is not valid UTF-8"
    return "contains a NUL byte" if b"\0" in raw else ""


def check_text(field: str, value: str) -> str:
    """``value``, if PostgreSQL's TEXT takes it (as UTF-8); else LimitError."""
    problem = text_problem(value)
    if problem:
        raise LimitError(f"bad_text: {field} {problem}")
    return value


def check_length(field: str, value: str) -> str:
    """``value`` if it has at most MAX_TEXT characters, else LimitError."""
    if len(value) > MAX_TEXT:
        raise LimitError(too_long(field, len(value)))
    return value


def too_long(field: str, length: int) -> str:
    """The reject reason for text over MAX_TEXT characters."""
    return f"too_long: {field} has {length} characters, max {MAX_TEXT}"


def too_deep(what: str, depth: int = MAX_DEPTH) -> str:
    """The reject reason for nesting beyond the cap."""
    return f"too_deep: {what} nested over {depth} levels"


# A string, or an unterminated one up to the end; possessive, so every match attempt that
# starts at a quote succeeds in one pass (no rescan from each later quote: linear time).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\(?:.|\Z))*+(?:"|\Z)', re.DOTALL)


def json_depth_exceeds(payload: bytes, cap: int = MAX_DEPTH) -> bool:
    """Whether a JSON text nests arrays/objects deeper than ``cap`` (before ``json.loads``,
    which recurses). Counting openers is two C scans; only a text with more openers than the
    cap has its strings blanked and its depth summed with numpy."""
    if payload.count(b"[") + payload.count(b"{") <= cap:
        return False
    bare = _JSON_STRING.sub(b'""', payload)
    arr = np.frombuffer(bare, dtype=np.uint8)
    step = np.isin(arr, (ord("["), ord("{"))).astype(np.int32)
    step -= np.isin(arr, (ord("]"), ord("}"))).astype(np.int32)
    return bool(arr.size) and int(np.cumsum(step).max()) > cap


# CBOR initial bytes that open a level: arrays (major type 4), maps (5) and tags (6).
_CBOR_NOT_OPENER = bytes(b for b in range(256) if not 0x80 <= b <= 0xDB)


def cbor_may_exceed(payload: bytes, cap: int = MAX_DEPTH) -> bool:
    """Whether a CBOR item could nest deeper than ``cap``: every level needs an initial byte
    in 0x80-0xDB, so with no more such bytes than the cap it cannot (one C call)."""
    return len(payload.translate(None, _CBOR_NOT_OPENER)) > cap


def depth_exceeds(obj: object, cap: int = MAX_DEPTH) -> bool:
    """Whether a decoded structure (lists, tuples, dicts) nests deeper than ``cap``; iterative."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if depth > cap:
            return True
        stack += [(c, depth + 1) for c in children if isinstance(c, dict | list | tuple)]
    return False
