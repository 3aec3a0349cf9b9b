"""China Standard Time (UTC+8), the clock Chinese transport and environment standards use.

HJ 212, JT/T 808 and GB/T 32960 all send civil date-time fields in UTC+8 without an offset.
"""

from __future__ import annotations

import calendar

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

CST_OFFSET_S = 8 * 3600
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def cst_to_utc_us(
    year: int, month: int, day: int, hour: int, minute: int, second: int
) -> int | None:
    """µs since the Unix epoch (UTC) of a UTC+8 civil time, or None if it is not a real
    date-time (or before 1970)."""
    if not (
        year >= 1970
        and 1 <= month <= 12
        and hour < 24
        and minute < 60
        and second < 60
        and 1 <= day <= calendar.monthrange(year, month)[1]
    ):
        return None
    return (calendar.timegm((year, month, day, hour, minute, second)) - CST_OFFSET_S) * 1_000_000


def cst_to_utc_us_array(
    year: IntArray,
    month: IntArray,
    day: IntArray,
    hour: IntArray,
    minute: IntArray,
    second: IntArray,
) -> tuple[IntArray, BoolArray]:
    """``cst_to_utc_us`` for whole columns: µs since the epoch and which rows are real times
    (rows that are not hold 0)."""
    year, month, day = (np.asarray(a, dtype=np.int64) for a in (year, month, day))
    hour, minute, second = (np.asarray(a, dtype=np.int64) for a in (hour, minute, second))
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _MONTH_DAYS[np.clip(month - 1, 0, 11)] + (leap & (month == 2))
    ok = (
        (year >= 1970)
        & (month >= 1)
        & (month <= 12)
        & (day >= 1)
        & (day <= month_days)
        & (hour < 24)
        & (minute < 60)
        & (second < 60)
    )
    y, m, d = np.where(ok, year, 1970), np.where(ok, month, 1), np.where(ok, day, 1)
    months = (y - 1970).astype("M8[Y]").astype("M8[M]") + (m - 1).astype("m8[M]")
    days = (months.astype("M8[D]") + (d - 1).astype("m8[D]")).astype(np.int64)
    seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - CST_OFFSET_S
    return np.where(ok, seconds * 1_000_000, 0), ok
