"""HJ 212-2017 ambient air-quality stations: real-time data every interval, hourly data.

Each report is a CN 2011 frame with the six pollutants of the national AQI (HJ 633-2012) as
``Rtd`` values with their data flags; after each full hour, a CN 2061 frame carries the hour's
``Avg``/``Min``/``Max``. Factor codes are HJ 212-2017 Appendix B's: a34004 PM2.5, a34002 PM10,
a21026 SO2, a21004 NO2, a21005 CO (mg/m³), a05024 O3. Flags are mostly N (normal); a
station is in maintenance (M) for an hour on some days, and one value in a thousand is
flagged D (instrument fault). ``Flag=4``: edition 2017, no response asked for.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from decoders.hj212 import frame
from simulators.keyed import stream_id, uniform
from simulators.models.base import F64, I64, Frames, GroupContext, Options, id_block, local_hours
from simulators.models.environment import DAY_US, AirSignal, _Periodic

CST = timedelta(hours=8)  # HJ 212 DataTime is Beijing time
HOUR_US = 3_600_000_000
REALTIME, HOURLY = 2011, 2061


class StationOptions(Options):
    """Options of the air-quality station."""

    episode_probability: float = Field(
        0.1, ge=0, le=1, description="chance that a station has a pollution episode on a day"
    )
    password: str = Field("123456", description="the PW field")


class Hj212Station(_Periodic):
    """An HJ 212 air-quality station (ST=22)."""

    name: ClassVar[str] = "hj212-station"
    kind: ClassVar[str] = "air"
    formats: ClassVar[tuple[str, ...]] = ("hj212",)
    table: ClassVar[str] = "hj212_readings"
    options: ClassVar[type[Options]] = StationOptions

    def __init__(self, ctx: GroupContext, options: StationOptions) -> None:
        super().__init__(ctx, options)
        self.signal = AirSignal(ctx, options.episode_probability)
        self.mn_prefix = f"SIM{id_block(ctx, 8)}"

    def external_ids(self) -> list[str]:
        """MNs: ``SIM`` + group and seed digits + the station number (20 characters)."""
        return [f"{self.mn_prefix}{i:09d}" for i in range(self.ctx.count)]

    def pollutants(self, dev: I64, seq: I64, t_us: I64) -> dict[str, F64]:
        """The six pollutants in their HJ 212 units (µg/m³; CO mg/m³)."""
        v = self.signal.values(dev, seq, t_us)
        h = local_hours(self.ctx, t_us)
        sun = np.clip(np.sin(np.pi * (h - 7) / 12), 0, None)  # O3 builds in sunlight
        pm = v["pm2_5"]
        return {
            "a34004": pm,
            "a34002": v["pm10"],
            "a21026": 4 + 0.08 * pm,
            "a21004": 15 + 0.5 * pm * (1 + 0.5 * np.cos(np.pi * (h - 8) / 12)),
            "a21005": 0.4 + 0.012 * pm,
            "a05024": 20 + 140 * sun,
        }

    def flags(self, dev: I64, seq: I64, t_us: I64) -> list[str]:
        """N, or M during the station's maintenance hour on some days, or D (fault) rarely."""
        seed, name = self.ctx.seed, self.ctx.name
        day = (t_us + self.ctx.utc_offset_s * 1_000_000) // DAY_US
        maint = (uniform(seed, stream_id(f"maint:{name}"), dev, day) < 0.05) & (
            np.floor(local_hours(self.ctx, t_us)) == 10
        )
        fault = uniform(seed, stream_id(f"fault:{name}"), dev, seq) < 0.001
        flags: list[str] = np.where(maint, "M", np.where(fault, "D", "N")).tolist()
        return flags

    def frames(self, start_us: int, end_us: int) -> Frames:
        """Real-time frames due, then the hourly frames of every hour that ended."""
        due = self.schedule.due(start_us, end_us)
        t = self.ctx.start_us + due.times_us
        values = self.pollutants(due.devices, due.seqs, t)
        flags = self.flags(due.devices, due.seqs, t)
        ids = self.external_ids_of(due.devices)
        cols = {
            code: np.round(v, 3 if code == "a21005" else 1).tolist() for code, v in values.items()
        }
        payloads = []
        pw = self.opts.password
        for i, when in enumerate(t.tolist()):
            stamp = _cst(when)
            cp = ";".join(f"{code}-Rtd={cols[code][i]},{code}-Flag={flags[i]}" for code in cols)
            payloads.append(
                frame(
                    f"QN={stamp}000;ST=22;CN={REALTIME};PW={pw};MN={ids[i]};Flag=4;"
                    f"CP=&&DataTime={stamp};{cp}&&"
                )
            )
        out = Frames(payloads, due.devices, due.seqs, t, np.full(len(due), REALTIME))
        hourly = self._hourly(start_us, end_us)
        if not len(hourly):
            return out
        return Frames(
            out.payloads + hourly.payloads,
            np.concatenate([out.devices, hourly.devices]),
            np.concatenate([out.seqs, hourly.seqs]),
            np.concatenate([out.times_us, hourly.times_us]),
            np.concatenate([out.variants, hourly.variants]),
        )

    def external_ids_of(self, devices: I64) -> list[str]:
        """The MNs of some devices."""
        return [f"{self.mn_prefix}{d:09d}" for d in devices.tolist()]

    def _hourly(self, start_us: int, end_us: int) -> Frames:
        """CN 2061 frames for the hours that ended in the window; each station sends its own
        a few seconds after the hour (its phase), DataTime the hour's start."""
        ctx = self.ctx
        n = ctx.count
        delay = 5_000_000 + (self.schedule.phase_us(np.arange(n)) % 55_000_000)
        first_hour = -(-(ctx.start_us + start_us - 65_000_000) // HOUR_US)
        payloads: list[bytes] = []
        devs: list[I64] = []
        hours: list[int] = []
        for hour in range(first_hour, (ctx.start_us + end_us) // HOUR_US + 1):
            sent_at = hour * HOUR_US + delay - ctx.start_us  # relative, per station
            mine = np.flatnonzero((sent_at > start_us) & (sent_at <= end_us))
            if not mine.shape[0] or hour * HOUR_US - HOUR_US < ctx.start_us:
                continue  # only hours the run saw from their start
            devs.append(mine.astype(np.int64))
            hours += [hour] * mine.shape[0]
            payloads += self._hour_frames(mine.astype(np.int64), hour * HOUR_US - HOUR_US)
        if not payloads:
            empty = np.empty(0, dtype=np.int64)
            return Frames([], empty, empty, empty, empty)
        dev = np.concatenate(devs)
        seq = np.asarray(hours, dtype=np.int64)
        t = seq * HOUR_US - HOUR_US
        return Frames(payloads, dev, seq, t, np.full(dev.shape[0], HOURLY))

    def _hour_frames(self, dev: I64, hour_start_us: int) -> list[bytes]:
        # the hour's statistics from twelve samples five minutes apart
        samples = [
            self.pollutants(
                dev,
                np.full(dev.shape[0], k),
                np.full(dev.shape[0], hour_start_us + k * 300_000_000),
            )
            for k in range(12)
        ]
        stamp = _cst(hour_start_us)
        ids = self.external_ids_of(dev)
        out = []
        stats: dict[str, tuple[Any, Any, Any]] = {}
        for code in samples[0]:
            stack = np.stack([s[code] for s in samples])
            digits = 3 if code == "a21005" else 1
            stats[code] = (
                np.round(stack.mean(0), digits).tolist(),
                np.round(stack.min(0), digits).tolist(),
                np.round(stack.max(0), digits).tolist(),
            )
        for i in range(dev.shape[0]):
            cp = ";".join(
                f"{c}-Avg={a[i]},{c}-Min={lo[i]},{c}-Max={hi[i]},{c}-Flag=N"
                for c, (a, lo, hi) in stats.items()
            )
            out.append(
                frame(
                    f"QN={stamp}000;ST=22;CN={HOURLY};PW={self.opts.password};MN={ids[i]};"
                    f"Flag=4;CP=&&DataTime={stamp};{cp}&&"
                )
            )
        return out


def _cst(time_us: int) -> str:
    """YYYYMMDDhhmmss in Beijing time."""
    return (datetime.fromtimestamp(time_us / 1e6, UTC) + CST).strftime("%Y%m%d%H%M%S")
