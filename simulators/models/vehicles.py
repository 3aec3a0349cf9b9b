"""Vehicles: new-energy cars (GB/T 32960 real-time data) and JT/T 808 terminals.

EVs live a commuter's day, shifted per vehicle by up to ±90 minutes: parked at home, a drive
to work around 07:30, parked, a drive home around 17:30, then charging in the evening. SOC,
odometer, speed, pack voltage and current follow that day (per-minute tables); a few vehicles
have a weak cell (a cell-voltage spread above 0.3 V) and, rarely, a vehicle reports a level-2
fault for an hour. JT/T 808 terminals (buses, trucks, hazardous-goods vehicles) drive a loop
around the city centre by day and park at night; some speed (the terminal's overspeed bit),
and the emergency bit is pressed now and then.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import numpy as np
from pydantic import Field

from decoders.gbt32960 import frame as gbt_frame
from decoders.jt808 import frame as jt808_frame
from decoders.jt808 import location_body
from simulators.keyed import normal, stream_id, uniform
from simulators.models.base import F64, I64, Frames, GroupContext, Options, id_block, local_hours
from simulators.models.environment import DAY_US, _Periodic

CST = timedelta(hours=8)
KM_PER_DEG = 111.32


def _minutes_table() -> dict[str, F64]:
    """A commuter EV's day, minute by minute: driving flag, charging flag, SOC, km driven."""
    m = np.arange(1440, dtype=np.float64)
    driving = ((m >= 450) & (m < 525)) | ((m >= 1050) & (m < 1125))  # 07:30, 17:30, 75 min
    charging = (m >= 1170) & (m < 1350)  # 19:30-22:30
    soc = np.empty(1440)
    level = 85.0
    for i in range(1440):  # from midnight, at the level the evening charge left
        if driving[i]:
            level -= 0.15
        elif charging[i]:
            level = min(95.0, level + 0.12)
        soc[i] = level
    km = np.cumsum(np.where(driving, 0.75, 0.0))  # 45 km/h average while driving
    return {
        "driving": driving.astype(np.float64),
        "charging": charging.astype(np.float64),
        "soc": soc,
        "km": km,
    }


_DAY = _minutes_table()


class EvOptions(Options):
    """Options of the EV model."""

    alarm_rate_per_hour: float = Field(
        0.001, ge=0, le=1, description="chance a vehicle reports a level-2 fault in an hour"
    )
    weak_cells: float = Field(0.002, ge=0, le=1, description="fraction with a weak cell")


class Ev(_Periodic):
    """A new-energy vehicle sending GB/T 32960 real-time data (command 0x02)."""

    name: ClassVar[str] = "ev"
    kind: ClassVar[str] = "ev"
    formats: ClassVar[tuple[str, ...]] = ("gbt32960",)
    table: ClassVar[str] = "ev_status"
    options: ClassVar[type[Options]] = EvOptions

    def __init__(self, ctx: GroupContext, options: EvOptions) -> None:
        super().__init__(ctx, options)
        n = np.arange(ctx.count)
        seed, name = ctx.seed, ctx.name
        self.shift_min = (180 * uniform(seed, stream_id(f"shift:{name}"), n) - 90).astype(np.int64)
        self.odo0 = 5_000 + 60_000 * uniform(seed, stream_id(f"odo:{name}"), n)
        self.weak = uniform(seed, stream_id(f"weak:{name}"), n) < options.weak_cells
        cos = math.cos(math.radians(ctx.city_lat))
        r = ctx.city_radius_km
        self.home = (
            ctx.city_lat + r * (2 * uniform(seed, stream_id(f"hy:{name}"), n) - 1) / KM_PER_DEG,
            ctx.city_lon
            + r * (2 * uniform(seed, stream_id(f"hx:{name}"), n) - 1) / (KM_PER_DEG * cos),
        )
        self.work = (
            ctx.city_lat
            + 0.3 * r * (2 * uniform(seed, stream_id(f"wy:{name}"), n) - 1) / KM_PER_DEG,
            ctx.city_lon
            + 0.3 * r * (2 * uniform(seed, stream_id(f"wx:{name}"), n) - 1) / (KM_PER_DEG * cos),
        )
        self.vin_prefix = f"LSVS{id_block(ctx, 5)}"

    def external_ids(self) -> list[str]:
        """17-character VINs (digits after a simulated manufacturer code)."""
        return [f"{self.vin_prefix}{i:08d}" for i in range(self.ctx.count)]

    def frames(self, start_us: int, end_us: int) -> Frames:
        """One real-time data frame per report due."""
        ctx, seed, name = self.ctx, self.ctx.seed, self.ctx.name
        due = self.schedule.due(start_us, end_us)
        d, t = due.devices, ctx.start_us + due.times_us
        minute = ((local_hours(ctx, t) * 60).astype(np.int64) - self.shift_min[d]) % 1440
        driving = _DAY["driving"][minute] > 0
        charging = _DAY["charging"][minute] > 0
        noise = normal(seed, stream_id(f"ev:{name}"), d, due.seqs)
        speed = np.where(driving, np.clip(45 + 12 * noise, 5, 110), 0.0)
        soc = np.clip(_DAY["soc"][minute] + 2 * np.tanh(noise / 3), 5, 100)
        days = (t - ctx.start_us) // DAY_US
        odo = self.odo0[d] + 112.5 * days + _DAY["km"][minute]
        volts = 330 + 0.7 * soc
        amps = np.where(driving, 20 + 0.9 * speed, np.where(charging, -32.0, 1.0))
        cell_max = 3.3 + 0.009 * soc
        cell_min = cell_max - np.where(self.weak[d], 0.35, 0.02)
        hour = t // 3_600_000_000
        level = np.where(
            uniform(seed, stream_id(f"evalarm:{name}"), d, hour) < self.opts.alarm_rate_per_hour,
            2,
            0,
        )
        # position: home, then along the way to work (and back), parked at work between
        m = minute.astype(np.float64)
        to_work = np.clip((m - 450) / 75, 0, 1)
        back = np.clip((m - 1050) / 75, 0, 1)
        f = np.where(m < 1050, to_work, 1 - back)
        lat = self.home[0][d] + f * (self.work[0][d] - self.home[0][d])
        lon = self.home[1][d] + f * (self.work[1][d] - self.home[1][d])
        vins = self.external_ids_of(d)
        rows = zip(
            t.tolist(), driving.tolist(), charging.tolist(), speed.tolist(), odo.tolist(),
            volts.tolist(), amps.tolist(), soc.tolist(), cell_max.tolist(), cell_min.tolist(),
            level.tolist(), lat.tolist(), lon.tolist(), noise.tolist(),
            strict=True,
        )  # fmt: skip
        payloads = [gbt_frame(0x02, vins[i], _realtime(*row)) for i, row in enumerate(rows)]
        return Frames(payloads, d, due.seqs, t)

    def external_ids_of(self, devices: I64) -> list[str]:
        """The VINs of some devices."""
        return [f"{self.vin_prefix}{i:08d}" for i in devices.tolist()]


def _realtime(
    t_us: int,
    driving: bool,
    charging: bool,
    speed: float,
    odo: float,
    volts: float,
    amps: float,
    soc: float,
    cell_max: float,
    cell_min: float,
    level: int,
    lat: float,
    lon: float,
    noise: float,
) -> bytes:
    """Real-time data: time, vehicle (0x01), location (0x05), extremes (0x06), alarms (0x07)."""
    when = datetime.fromtimestamp(t_us / 1e6, UTC) + CST
    stamp = bytes([when.year - 2000, when.month, when.day, when.hour, when.minute, when.second])
    vehicle = struct.pack(
        ">BBBHIHHBBBHBB",
        1 if driving else 2,  # started / off
        1 if charging else 3,  # parked charging / not charging
        1,  # pure electric
        round(speed * 10),
        round(odo * 10),
        round(volts * 10),
        round((amps + 1000) * 10),
        round(soc),
        1,  # DC-DC working
        0x0E if driving else 0x00,  # gear D / neutral (bits 0-3), with drive force (bit 5 clear)
        5_000,
        round(min(100, speed)) if driving else 0,
        0,
    )
    location = struct.pack(">BII", 0, round(lon * 1e6), round(lat * 1e6))
    temp = round(28 + 8 * charging + 4 * driving + noise)
    extremes = struct.pack(
        ">BBHBBHBBBBBB",
        1, 12, round(cell_max * 1000), 1, 40, round(cell_min * 1000),
        1, 3, temp + 40, 1, 7, temp - 3 + 40,
    )  # fmt: skip
    alarms = struct.pack(">BI", level, 0b100 if level else 0) + b"\x00\x00\x00\x00"
    return stamp + b"\x01" + vehicle + b"\x05" + location + b"\x06" + extremes + b"\x07" + alarms


class TerminalOptions(Options):
    """Options of the JT/T 808 terminal model."""

    speed_limit_kmh: float = Field(80, gt=0, description="above it the terminal sets bit 1")
    speeders: float = Field(0.05, ge=0, le=1, description="fraction that drive 1.5× faster")
    emergency_rate_per_hour: float = Field(
        0.0005, ge=0, le=1, description="chance the SOS button is on in an hour"
    )


class Jt808Terminal(_Periodic):
    """A JT/T 808-2013 vehicle terminal sending location reports (0x0200)."""

    name: ClassVar[str] = "jt808"
    kind: ClassVar[str] = "vehicle"
    formats: ClassVar[tuple[str, ...]] = ("jt808",)
    table: ClassVar[str] = "vehicle_positions"
    options: ClassVar[type[Options]] = TerminalOptions

    def __init__(self, ctx: GroupContext, options: TerminalOptions) -> None:
        super().__init__(ctx, options)
        if ctx.count > 1_000_000:
            raise ValueError("at most 1,000,000 terminals in a group (6-digit serial numbers)")
        n = np.arange(ctx.count)
        seed, name = ctx.seed, ctx.name
        self.radius_km = 1 + (ctx.city_radius_km - 1) * uniform(seed, stream_id(f"loop:{name}"), n)
        self.theta0 = 2 * np.pi * uniform(seed, stream_id(f"th0:{name}"), n)
        self.fast = uniform(seed, stream_id(f"fast:{name}"), n) < options.speeders
        self.phone_prefix = f"1{id_block(ctx, 5)}"

    def external_ids(self) -> list[str]:
        """12-digit SIM numbers (the device id is the number without leading zeros)."""
        return [f"{self.phone_prefix}{i:06d}" for i in range(self.ctx.count)]

    def frames(self, start_us: int, end_us: int) -> Frames:
        """One location report per report due."""
        ctx, seed, name, opts = self.ctx, self.ctx.seed, self.ctx.name, self.opts
        due = self.schedule.due(start_us, end_us)
        d, t = due.devices, ctx.start_us + due.times_us
        h = local_hours(ctx, t)
        moving = (h >= 6) & (h < 23)
        noise = normal(seed, stream_id(f"jt:{name}"), d, due.seqs)
        base = np.where(self.fast[d], 1.5, 1.0) * (40 + 10 * noise)
        speed = np.where(moving, np.clip(base, 0, 140), 0.0)
        r = self.radius_km[d]
        # along the loop at 40 km/h on average (the reported speed varies around it)
        theta = self.theta0[d] + 40 * (t - ctx.start_us) / 3.6e9 / r
        cos = math.cos(math.radians(ctx.city_lat))
        lat = ctx.city_lat + r * np.cos(theta) / KM_PER_DEG
        lon = ctx.city_lon + r * np.sin(theta) / (KM_PER_DEG * cos)
        heading = (np.degrees(np.arctan2(np.cos(theta), -np.sin(theta))) % 360).astype(np.int64)
        hour = t // 3_600_000_000
        sos = uniform(seed, stream_id(f"sos:{name}"), d, hour) < opts.emergency_rate_per_hour
        alarm = np.where(sos, 1, 0) | np.where(speed > opts.speed_limit_kmh, 2, 0)
        status = np.where(moving, 0x3, 0x2)  # bit 0 ACC on, bit 1 located
        mileage = (40 * 17 * ((t - ctx.start_us) / DAY_US) + 1000 * r).astype(np.int64)
        phones = self.external_ids_of(d)
        payloads = []
        for i, (when, la, lo, sp, hd, al, st, km, sq) in enumerate(
            zip(
                t.tolist(), lat.tolist(), lon.tolist(), speed.tolist(), heading.tolist(),
                alarm.tolist(), status.tolist(), mileage.tolist(), due.seqs.tolist(),
                strict=True,
            )
        ):  # fmt: skip
            stamp = (datetime.fromtimestamp(when / 1e6, UTC) + CST).strftime("%y%m%d%H%M%S")
            extras = b"\x01\x04" + struct.pack(">I", km * 10) + b"\x30\x01\x17\x31\x01\x0c"
            body = location_body(
                la, lo, time=stamp, speed_kmh=sp, heading=hd, altitude=20, alarm=al,
                status=st, extras=extras,
            )  # fmt: skip
            payloads.append(jt808_frame(0x0200, phones[i], sq & 0xFFFF, body))
        return Frames(payloads, d, due.seqs, t)

    def external_ids_of(self, devices: I64) -> list[str]:
        """The SIM numbers of some devices."""
        return [f"{self.phone_prefix}{i:06d}" for i in devices.tolist()]
