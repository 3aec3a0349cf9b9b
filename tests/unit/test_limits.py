"""decoders.limits: the PostgreSQL limits and depth checks every decoder uses."""

from __future__ import annotations

import time

import pytest

from decoders.limits import (
    TS_MAX_US,
    TS_MIN_US,
    LimitError,
    cbor_may_exceed,
    check_int,
    check_time_us,
    depth_exceeds,
    json_depth_exceeds,
    text_problem,
)


@pytest.mark.parametrize(
    ("payload", "deep"),
    [
        (b"[" * 32 + b"]" * 32, False),
        (b"[" * 33 + b"]" * 33, True),
        (b'["' + b"[" * 100 + b'"]', False),  # brackets inside a string are not nesting
        (b'["\\"' + b"[" * 100 + b'"]', False),  # an escaped quote does not end the string
        (b"[" * 20 + b"]" * 20 + b"[" * 20 + b"]" * 20, False),  # many openers, shallow
        (b"[" * 40 + b'"' + b"[" * 10, True),  # an unterminated string runs to the end
    ],
)
def test_json_depth_is_counted_outside_strings(payload: bytes, deep: bool) -> None:
    assert json_depth_exceeds(payload) is deep


def test_json_depth_check_is_linear_on_unterminated_escaped_strings() -> None:
    payload = b"[" * 40 + b'"' + b'\\"' * 500_000
    start = time.perf_counter()
    assert json_depth_exceeds(payload)
    assert time.perf_counter() - start < 1.0


def test_cbor_depth_bound_and_iterative_measure() -> None:
    assert not cbor_may_exceed(b"\x81" * 32 + b"\x00")
    assert cbor_may_exceed(b"\x81" * 33 + b"\x00")
    nested: list[object] = []
    for _ in range(10_000):
        nested = [nested]
    assert depth_exceeds(nested)
    assert not depth_exceeds([{"a": [1, 2]}, {"b": {"c": 3}}])


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("plain", ""),
        ("粤B12345", ""),
        ("a\x00b", "contains a NUL byte"),
        ("\ud800", "is not valid UTF-8"),
        ("粤\x00", "contains a NUL byte"),
        (b"\xff", "is not valid UTF-8"),
        (b"ok", ""),
        ("粤".encode(), ""),
    ],
)
def test_text_postgresql_refuses(value: str | bytes, problem: str) -> None:
    assert text_problem(value) == problem


def test_integer_and_time_limits_name_the_field_value_and_type() -> None:
    assert check_int("antenna", 32767, "int16") == 32767
    with pytest.raises(LimitError, match=r"^out_of_range: antenna=70000 \(int16\)$"):
        check_int("antenna", 70000, "int16")
    assert check_time_us("t", TS_MIN_US) == TS_MIN_US
    with pytest.raises(LimitError, match=r"^out_of_range: t=-\d+ \(timestamptz\)$"):
        check_time_us("t", TS_MIN_US - 1)
    with pytest.raises(LimitError, match=r"\(timestamptz\)$"):
        check_time_us("t", TS_MAX_US + 1)
