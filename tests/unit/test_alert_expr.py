"""The rule expression language: what it computes, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from alerts.expr import ExprError, compile_expr

COLS = {
    "pm2_5": np.array([10.0, 80.0, np.nan, 120.0]),
    "speed_kmh": np.array([60.0, 85.5, 40.0, 100.0], dtype=np.float32),
    "alarm": np.array([0b01, 0b10, 0b11, 0], dtype=np.int64),
    "flag": np.array([b"N", b"D", b"N", b"M"]),
    "vmax": np.array([4.1, 4.2, 4.3, 4.0]),
    "vmin": np.array([3.9, 3.7, 4.2, 3.5]),
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("pm2_5 > 75", [False, True, False, True]),  # NULL (NaN) never matches
        ("pm2_5 > 75 and not (flag in ['D', 'M'])", [False, False, False, False]),
        ("pm2_5 > 75 and flag not in ['N']", [False, True, False, True]),
        ("abs(speed_kmh - 60) >= 20 or bit(alarm, 0)", [True, True, True, True]),
        ("bit(alarm, 1) and speed_kmh > 80", [False, True, False, False]),
        ("max(vmax, 0) - vmin > 0.35", [False, True, False, True]),
        ("50 < speed_kmh <= 100", [True, True, False, True]),
        ("flag == 'N'", [True, False, True, False]),
        ("min(pm2_5, 100) >= 100", [False, False, False, True]),
        ("pm2_5 % 20 == 0", [False, True, False, True]),
        ("True", [True, True, True, True]),
    ],
)
def test_expressions_evaluate_per_row(source: str, expected: list[bool]) -> None:
    expr = compile_expr(source, COLS)
    assert expr.mask(COLS).tolist() == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("__import__('os')", "function '__import__' is not allowed"),
        ("os.system('x')", "attribute is not allowed"),
        ("pm2_5.real > 1", "attribute is not allowed (at column 1)"),
        ("pm25 > 1", "unknown column 'pm25' (known: alarm, flag, pm2_5"),
        ("[x for x in pm2_5]", "listcomp is not allowed"),
        ("pm2_5 ** 2 > 1", "operator Pow is not allowed"),
        ("pm2_5 > ", "syntax error"),
        ("flag in flag", "'in' needs a literal list"),
        ("lambda: 1", "lambda is not allowed"),
        ("abs(pm2_5, 1) > 0", "abs() takes 1 argument(s)"),
    ],
)
def test_anything_outside_the_language_is_refused(source: str, message: str) -> None:
    with pytest.raises(ExprError) as err:
        compile_expr(source, COLS)
    assert message in str(err.value)


def test_names_used_are_reported() -> None:
    assert compile_expr("pm2_5 > 75 and bit(alarm, 2)", COLS).names == {"pm2_5", "alarm"}
