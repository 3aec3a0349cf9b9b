"""Sun elevation for many (time, place) pairs at once: is it daylight where the lamp is?

The NOAA solar calculator's equations (NOAA Global Monitoring Laboratory, "General Solar
Position Calculations" and its spreadsheet, after Meeus, *Astronomical Algorithms*), written
with numpy so a batch of readings costs a few array operations. Accurate to about a minute
of sunrise/sunset time at city latitudes, which is what a lamp schedule needs; the unit test
checks sunrise and sunset against the ``astral`` package.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
SUNRISE_ELEVATION_DEG = -0.833  # the sun's upper limb on the horizon, with refraction


def sun_elevation(time_us: npt.NDArray[np.int64], lat: F64, lon: F64) -> F64:
    """Geometric elevation of the sun's centre above the horizon, degrees, at UTC ``time_us``
    (µs since the Unix epoch) and ``lat``/``lon`` (degrees, east positive).

    The sun's declination and the equation of time change by under a second of time per
    minute, so they are computed once per distinct minute of the batch; the hour angle uses
    each row's exact time."""
    minute, inverse = np.unique(time_us // 60_000_000, return_inverse=True)
    decl_m, eq_time_m = _declination_and_equation_of_time(minute.astype(np.float64) * 60.0)
    decl, eq_time_min = decl_m[inverse], eq_time_m[inverse]
    seconds = time_us.astype(np.float64) / 1e6
    minutes_utc = np.mod(seconds, 86400.0) / 60.0
    true_solar = np.mod(minutes_utc + eq_time_min + 4 * lon, 1440.0)
    hour_angle = np.radians(true_solar / 4 - 180.0)
    lat_r = np.radians(lat)
    cos_zenith = np.sin(lat_r) * np.sin(decl) + np.cos(lat_r) * np.cos(decl) * np.cos(hour_angle)
    out: F64 = 90.0 - np.degrees(np.arccos(np.clip(cos_zenith, -1.0, 1.0)))
    return out


def _declination_and_equation_of_time(seconds: F64) -> tuple[F64, F64]:
    """The sun's declination (radians) and the equation of time (minutes) at UTC seconds."""
    jd = seconds / 86400.0 + 2440587.5
    t = (jd - 2451545.0) / 36525.0  # Julian centuries since J2000.0
    l0 = np.mod(280.46646 + t * (36000.76983 + t * 0.0003032), 360.0)
    m = 357.52911 + t * (35999.05029 - 0.0001537 * t)
    e = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    m_r = np.radians(m)
    c = (
        np.sin(m_r) * (1.914602 - t * (0.004817 + 0.000014 * t))
        + np.sin(2 * m_r) * (0.019993 - 0.000101 * t)
        + np.sin(3 * m_r) * 0.000289
    )
    omega = np.radians(125.04 - 1934.136 * t)
    app_long = np.radians(l0 + c - 0.00569 - 0.00478 * np.sin(omega))
    obliq0 = 23 + (26 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))) / 60) / 60
    obliq = np.radians(obliq0 + 0.00256 * np.cos(omega))
    decl: F64 = np.arcsin(np.sin(obliq) * np.sin(app_long))
    y = np.tan(obliq / 2) ** 2
    l0_r = np.radians(l0)
    eq_time: F64 = 4 * np.degrees(
        y * np.sin(2 * l0_r)
        - 2 * e * np.sin(m_r)
        + 4 * e * y * np.sin(m_r) * np.cos(2 * l0_r)
        - 0.5 * y * y * np.sin(4 * l0_r)
        - 1.25 * e * e * np.sin(2 * m_r)
    )
    return decl, eq_time


def is_daylight(time_us: npt.NDArray[np.int64], lat: F64, lon: F64) -> npt.NDArray[np.bool_]:
    """Between sunrise and sunset (NaN positions are never daylight)."""
    with np.errstate(invalid="ignore"):
        out: npt.NDArray[np.bool_] = sun_elevation(time_us, lat, lon) > SUNRISE_ELEVATION_DEG
    return out
