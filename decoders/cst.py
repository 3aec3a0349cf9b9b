"""China Standard Time (UTC+8), the clock Chinese transport and environment standards use.

HJ 212, JT/T 808 and GB/T 32960 all send civil date-time fields in UTC+8 without an offset.
"""

from __future__ import annotations

import calendar

CST_OFFSET_S = 8 * 3600


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
