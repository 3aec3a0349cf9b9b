"""Smart streetlight controllers: on at dusk, off at dawn, dimmed late at night, and failures.

The lamp switches on when the sun at the controller's place goes below -3° (after sunset)
and off when it rises above it (the solar position of ``alerts/solar.py``); it burns at 100 %
until 23:00 local time, at ``night_dimming_pct`` until 05:00, then at 100 % until dawn. A
fraction of controllers get a lamp failure at some point of the run (fault bit 0, no current
while switched on); a smaller fraction are day-burners (switched on in daylight, bit 3).
Frames are cityflux's 34-byte streetlight format, built for all controllers due at once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from alerts.solar import sun_elevation
from decoders.streetlight import FAULT_DAY_BURNER, FAULT_LAMP
from decoders.streetlight import FRAME as STREETLIGHT_FRAME
from decoders.streetlight import MAGIC as STREETLIGHT_MAGIC
from simulators.keyed import normal, stream_id, uniform
from simulators.models.base import (
    Frames,
    GroupContext,
    Options,
    compact_frames,
    id_block,
    local_hours,
    places,
)
from simulators.models.environment import DAY_US, _Periodic

SWITCH_ELEVATION_DEG = -3.0


class StreetlightOptions(Options):
    """Options of the streetlight controller."""

    lamp_w: float = Field(150.0, gt=0, description="lamp power at 100 %, W")
    night_dimming_pct: int = Field(50, ge=0, le=100, description="dimming 23:00-05:00")
    lamp_failure_rate: float = Field(
        0.002, ge=0, le=1, description="fraction of lamps that fail during the run"
    )
    day_burner_rate: float = Field(
        0.0005, ge=0, le=1, description="fraction of controllers stuck on in daylight"
    )


class Streetlight(_Periodic):
    """A streetlight controller (cityflux streetlight frame v1)."""

    name: ClassVar[str] = "streetlight"
    kind: ClassVar[str] = "streetlight"
    formats: ClassVar[tuple[str, ...]] = ("streetlight",)
    table: ClassVar[str] = "streetlight_status"
    options: ClassVar[type[Options]] = StreetlightOptions

    def __init__(self, ctx: GroupContext, options: StreetlightOptions) -> None:
        super().__init__(ctx, options)
        n = np.arange(ctx.count)
        seed, name = ctx.seed, ctx.name
        self.imei = 861_000_000_000_000 + int(id_block(ctx, 7)) * 100_000_000
        self.lat, self.lon = places(ctx)
        self.fails = uniform(seed, stream_id(f"lampfail:{name}"), n) < options.lamp_failure_rate
        # failures happen during the first hour of the run, spread evenly
        self.fail_at_us = ctx.start_us + (
            3_600_000_000 * uniform(seed, stream_id(f"lampfail_t:{name}"), n)
        ).astype(np.int64)
        self.burner = uniform(seed, stream_id(f"burner:{name}"), n) < options.day_burner_rate
        self.energy0 = 100 + 2000 * uniform(seed, stream_id(f"kwh:{name}"), n)

    def external_ids(self) -> list[str]:
        """15-digit IMEIs of the controllers' NB-IoT modules."""
        return [str(self.imei + i) for i in range(self.ctx.count)]

    def registry_rows(self) -> dict[str, list[Any]]:
        """District and the lamp's location (the daylight rules need it)."""
        rows = super().registry_rows()
        rows["lat"], rows["lon"] = self.lat.tolist(), self.lon.tolist()
        return rows

    def frames(self, start_us: int, end_us: int) -> Frames:
        """One status frame per report due."""
        ctx, opts = self.ctx, self.opts
        due = self.schedule.due(start_us, end_us)
        d, t = due.devices, self.ctx.start_us + due.times_us
        elevation = sun_elevation(t, self.lat[d], self.lon[d])
        h = local_hours(ctx, t)
        night = elevation < SWITCH_ELEVATION_DEG
        on = night | self.burner[d]
        dim = np.where((h >= 23) | (h < 5), opts.night_dimming_pct, 100)
        dim = np.where(night, dim, 100)
        failed = self.fails[d] & (t >= self.fail_at_us[d])
        noise = normal(ctx.seed, stream_id(f"sl:{ctx.name}"), d, due.seqs)
        voltage = 220 + 4 * noise
        power = np.where(on & ~failed, opts.lamp_w * dim / 100 * (1 + 0.01 * noise), 0.0)
        current = power / voltage
        days = (t - ctx.start_us) / DAY_US
        energy = self.energy0[d] + opts.lamp_w / 1000 * 11 * days  # ~11 lit hours a day
        faults = np.where(failed, FAULT_LAMP, 0) | np.where(
            self.burner[d] & ~night, FAULT_DAY_BURNER, 0
        )
        payloads = compact_frames(
            STREETLIGHT_FRAME,
            {
                "magic": STREETLIGHT_MAGIC,
                "version": 1,
                "imei": self.imei + d,
                "time": t // 1_000_000,
                "seq": due.seqs & 0xFFFF,
                "voltage": np.round(voltage * 10),
                "current": np.round(current * 1000),
                "power": np.round(power * 10),
                "energy": np.round(energy * 1000),
                "dimming": np.where(on, dim, 0),
                "lamp": on,
                "faults": faults,
                "temperature": np.round(28 + 10 * on + 2 * noise),
            },
            len(due),
        )
        return Frames(payloads, d, due.seqs, t)
