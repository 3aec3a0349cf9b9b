"""The air quality index of HJ 633-2012 (China), for many readings at once.

IAQI of a pollutant = linear interpolation of its concentration between the breakpoints of
Table 1, rounded up to an integer; AQI = the highest IAQI; category 1 (0-50, excellent) to
6 (> 300, severe). Hourly values: SO2, NO2, CO and O3 use their 1-hour breakpoints; PM2.5
and PM10 have none and use their 24-hour breakpoints (HJ 633-2012 Table 1, note 3); an SO2
1-hour value above 800 µg/m³ is not indexed (note 2: its 24-hour index is reported
instead, which hourly data cannot give); above the last breakpoint the IAQI is 500.
Units: µg/m³, CO in mg/m³. The breakpoints and the rounding match the public test vectors
of caiyunapp/aqi-hub (tests/aqi_cn/test_cal_aqi_cn.py), which the unit test reuses.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
IAQI_STEPS = np.array([0, 50, 100, 150, 200, 300, 400, 500], dtype=np.float64)
# HJ 633-2012 Table 1, hourly reporting (PM: 24-hour breakpoints)
BREAKPOINTS: dict[str, npt.NDArray[np.float64]] = {
    "pm2_5": np.array([0, 35, 75, 115, 150, 250, 350, 500], dtype=np.float64),
    "pm10": np.array([0, 50, 150, 250, 350, 420, 500, 600], dtype=np.float64),
    "so2": np.array([0, 150, 500, 650, 800], dtype=np.float64),
    "no2": np.array([0, 100, 200, 700, 1200, 2340, 3090, 3840], dtype=np.float64),
    "co": np.array([0, 5, 10, 35, 60, 90, 120, 150], dtype=np.float64),
    "o3": np.array([0, 160, 200, 300, 400, 800, 1000, 1200], dtype=np.float64),
}
POLLUTANTS = tuple(BREAKPOINTS)
# where the pollutants are found: HJ 212-2017 factor codes, and env_readings metric names
HJ212_FACTORS = {
    "pm2_5": "a34004",
    "pm10": "a34002",
    "so2": "a21026",
    "no2": "a21004",
    "co": "a21005",
    "o3": "a05024",
}
ENV_METRICS = {p: p for p in POLLUTANTS}
CATEGORY_UPPER = np.array([50, 100, 150, 200, 300], dtype=np.float64)


def iaqi(pollutant: str, concentration: F64) -> F64:
    """The IAQI of each concentration (NaN when it cannot be indexed)."""
    bp = BREAKPOINTS[pollutant]
    steps = IAQI_STEPS[: bp.shape[0]]
    c = np.asarray(concentration, dtype=np.float64)
    out = np.ceil(np.interp(c, bp, steps) - 1e-9)
    out = np.where(c > bp[-1], 500.0, out)
    bad = np.isnan(c) | (c < 0)
    if pollutant == "so2":
        bad |= c > bp[-1]
    out[bad] = np.nan
    return out


def category(aqi: F64) -> F64:
    """Category 1-6 of each AQI (NaN stays NaN)."""
    cat = np.searchsorted(CATEGORY_UPPER, aqi, side="left").astype(np.float64) + 1
    cat[np.isnan(aqi)] = np.nan
    return cat
