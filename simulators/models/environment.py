"""Environmental sensors: NB-IoT stations (compact binary or SenML) and water-level gauges.

Values follow the day: temperature peaks mid-afternoon, humidity opposite; particulates
have morning and evening traffic peaks and, on some days and places, a pollution episode of
a few hours at three to five times the usual level; noise follows activity. Each device has
its own offsets; every draw is keyed by (seed, device, report), so frames are reproducible.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import cbor2
import numpy as np
from pydantic import Field

from decoders.nbiot_env import FRAME as NBIOT_FRAME
from decoders.nbiot_env import MAGIC as NBIOT_MAGIC
from simulators.keyed import normal, stream_id, uniform
from simulators.models.base import (
    F64,
    I64,
    Frames,
    GroupContext,
    Options,
    compact_frames,
    districts,
    id_block,
    local_hours,
    places,
)
from simulators.schedule import Schedule

DAY_US = 86_400_000_000


def _bump(h: F64, centre: float, width: float) -> F64:
    return np.asarray(np.exp(-(((h - centre) / width) ** 2)), dtype=np.float64)


class AirSignal:
    """Temperature, humidity, particulates and noise for (device, time) pairs."""

    def __init__(self, ctx: GroupContext, episode_probability: float) -> None:
        self.ctx = ctx
        n = np.arange(ctx.count)
        seed, name = ctx.seed, ctx.name
        self.temp_offset = 1.5 * normal(seed, stream_id(f"t0:{name}"), n)
        self.pm_base = 15 + 30 * uniform(seed, stream_id(f"pm0:{name}"), n)
        self.rssi_base = -70 - 40 * uniform(seed, stream_id(f"rssi:{name}"), n)
        self.battery_base = 3550 + 150 * uniform(seed, stream_id(f"bat:{name}"), n)
        self.episodes = episode_probability

    def values(self, dev: I64, seq: I64, t_us: I64) -> dict[str, F64]:
        """Every quantity for each (device, report, absolute time)."""
        ctx, seed, name = self.ctx, self.ctx.seed, self.ctx.name
        h = local_hours(ctx, t_us)
        day = (t_us + ctx.utc_offset_s * 1_000_000) // DAY_US
        daily = np.sin(2 * np.pi * (h - 9) / 24)
        noise = normal(seed, stream_id(f"noise:{name}"), dev, seq)
        # an episode: on some (device, day) pairs, hours [start, start + 2..6) at ×3-5
        ep_on = uniform(seed, stream_id(f"ep:{name}"), dev, day) < self.episodes
        ep_start = 4 + 14 * uniform(seed, stream_id(f"ep0:{name}"), dev, day)
        ep_len = 2 + 4 * uniform(seed, stream_id(f"ep1:{name}"), dev, day)
        ep_gain = 3 + 2 * uniform(seed, stream_id(f"ep2:{name}"), dev, day)
        in_ep = ep_on & (h >= ep_start) & (h < ep_start + ep_len)
        traffic = 1 + 0.4 * (_bump(h, 8.0, 1.5) + _bump(h, 19.0, 2.0))
        pm25 = self.pm_base[dev] * traffic * np.where(in_ep, ep_gain, 1.0) * (1 + 0.08 * noise)
        days_run = (t_us - ctx.start_us) / DAY_US
        return {
            "temperature": 24 + 5 * daily + self.temp_offset[dev] + 0.2 * noise,
            "humidity": np.clip(70 - 15 * daily + 2 * noise, 5, 100),
            "pm2_5": np.maximum(pm25, 0.5),
            "pm10": np.maximum(pm25 * 1.6 + 3 * noise, 1.0),
            "noise": 45 + 15 * np.clip(daily + 0.5, 0, 1.5) + 2 * noise,
            "battery": self.battery_base[dev] - 3 * days_run,
            "rssi": self.rssi_base[dev] + 2 * noise,
        }


class EnvOptions(Options):
    """Options of the environmental sensor models."""

    episode_probability: float = Field(
        0.1, ge=0, le=1, description="chance that a device has a pollution episode on a day"
    )


class _Periodic:
    """A model whose devices report every interval (the schedule from the seed)."""

    formats: ClassVar[tuple[str, ...]]
    resolution_us: ClassVar[int] = 1_000_000

    def __init__(self, ctx: GroupContext, options: Any) -> None:
        self.ctx, self.opts = ctx, options
        self.schedule = Schedule(ctx.count, ctx.interval_us, self.resolution_us, ctx.seed, ctx.name)

    @property
    def format(self) -> str:
        """The decoder its frames are for."""
        return self.ctx.format or self.formats[0]

    def registry_rows(self) -> dict[str, list[Any]]:
        """District and location of every device."""
        lat, lon = places(self.ctx)
        return {"district": districts(self.ctx), "lat": lat.tolist(), "lon": lon.tolist()}


class NbiotEnv(_Periodic):
    """NB-IoT environmental sensor, 32-byte compact binary frame (cityflux nbiot-env v1)."""

    name: ClassVar[str] = "nbiot-env"
    kind: ClassVar[str] = "env"
    formats: ClassVar[tuple[str, ...]] = ("nbiot-env",)
    table: ClassVar[str] = "env_readings"
    options: ClassVar[type[Options]] = EnvOptions

    def __init__(self, ctx: GroupContext, options: EnvOptions) -> None:
        super().__init__(ctx, options)
        self.imei = 860_000_000_000_000 + int(id_block(ctx, 7)) * 100_000_000
        if ctx.count > 100_000_000:
            raise ValueError("at most 100,000,000 devices in a group")
        self.signal = AirSignal(ctx, options.episode_probability)

    def external_ids(self) -> list[str]:
        """15-digit IMEIs."""
        return [str(self.imei + i) for i in range(self.ctx.count)]

    def frames(self, start_us: int, end_us: int) -> Frames:
        """One frame per report due."""
        due = self.schedule.due(start_us, end_us)
        t = self.ctx.start_us + due.times_us
        v = self.signal.values(due.devices, due.seqs, t)
        battery = np.round(v["battery"]).astype(np.int64)
        payloads = compact_frames(
            NBIOT_FRAME,
            {
                "magic": NBIOT_MAGIC,
                "version": 1,
                "imei": self.imei + due.devices,
                "time": t // 1_000_000,
                "seq": due.seqs & 0xFFFF,
                "temperature": np.round(v["temperature"] * 100),
                "humidity": np.round(v["humidity"] * 100),
                "pm2_5": np.round(v["pm2_5"] * 10),
                "pm10": np.round(v["pm10"] * 10),
                "noise": np.round(v["noise"] * 10),
                "battery": battery,
                "rssi": np.round(v["rssi"]),
                "status": np.where(battery < 3300, 8, 0),
            },
            len(due),
        )
        return Frames(payloads, due.devices, due.seqs, t)


# SenML units (RFC 8428 §12.1 registry; ug/m3 and dB are not registered: secondary units)
_SENML = (
    ("temperature", "Cel", 2),
    ("humidity", "%RH", 1),
    ("pm2_5", "ug/m3", 1),
    ("pm10", "ug/m3", 1),
    ("noise", "dB", 1),
)


class NbiotSenml(_Periodic):
    """NB-IoT environmental sensor sending SenML packs (JSON, or CBOR with format senml-cbor)."""

    name: ClassVar[str] = "nbiot-senml"
    kind: ClassVar[str] = "env"
    formats: ClassVar[tuple[str, ...]] = ("senml-json", "senml-cbor")
    table: ClassVar[str] = "env_readings"
    resolution_us: ClassVar[int] = 1_000  # SenML times in ms here
    options: ClassVar[type[Options]] = EnvOptions

    def __init__(self, ctx: GroupContext, options: EnvOptions) -> None:
        super().__init__(ctx, options)
        self.signal = AirSignal(ctx, options.episode_probability)
        self.prefix = f"sn{id_block(ctx, 6)}-"

    def external_ids(self) -> list[str]:
        """``sn<group><seed>-<n>`` (the topic or CoAP path names the device)."""
        return [f"{self.prefix}{i:07d}" for i in range(self.ctx.count)]

    def frames(self, start_us: int, end_us: int) -> Frames:
        """One pack per report due: base time, five readings and the battery in volts."""
        due = self.schedule.due(start_us, end_us)
        t = self.ctx.start_us + due.times_us
        v = self.signal.values(due.devices, due.seqs, t)
        cols = [np.round(v[k], d).tolist() for k, _, d in _SENML]
        volts = np.round(v["battery"] / 1000, 3).tolist()
        bts = (t / 1e6).tolist()
        payloads: list[bytes] = []
        cbor = self.format == "senml-cbor"
        for i, bt in enumerate(bts):
            pack: list[dict[str, Any]] = [
                {"n": n, "u": u, "v": cols[k][i]} for k, (n, u, _) in enumerate(_SENML)
            ]
            pack[0] = {"bt": bt, **pack[0]}
            pack.append({"n": "battery", "u": "V", "v": volts[i]})
            if cbor:
                # RFC 8428 §6: CBOR labels are integers (bt -3, n 0, u 1, v 2)
                labels = {"bt": -3, "n": 0, "u": 1, "v": 2}
                payloads.append(cbor2.dumps([{labels[k]: x for k, x in r.items()} for r in pack]))
            else:
                payloads.append(json.dumps(pack, separators=(",", ":")).encode())
        return Frames(payloads, due.devices, due.seqs, t)


class WaterOptions(Options):
    """Options of the water-level gauge."""

    rain_probability: float = Field(
        0.15, ge=0, le=1, description="chance of a storm at a gauge on a given day"
    )


class WaterLevel(_Periodic):
    """Water-level gauge: SenML ``water_level`` in metres; a tidal swing, and storms that
    raise the level above the gauge's warning line (registered as install metadata)."""

    name: ClassVar[str] = "water-level"
    kind: ClassVar[str] = "water"
    formats: ClassVar[tuple[str, ...]] = ("senml-json", "senml-cbor")
    table: ClassVar[str] = "env_readings"
    resolution_us: ClassVar[int] = 1_000
    options: ClassVar[type[Options]] = WaterOptions

    def __init__(self, ctx: GroupContext, options: WaterOptions) -> None:
        super().__init__(ctx, options)
        n = np.arange(ctx.count)
        self.base = np.round(1.0 + 1.5 * uniform(ctx.seed, stream_id(f"wl0:{ctx.name}"), n), 2)
        self.warning = np.round(self.base + 1.0, 2)
        self.prefix = f"wl{id_block(ctx, 6)}-"

    def external_ids(self) -> list[str]:
        """``wl<group><seed>-<n>``."""
        return [f"{self.prefix}{i:05d}" for i in range(self.ctx.count)]

    def registry_rows(self) -> dict[str, list[Any]]:
        """Location plus each gauge's warning line (``install.warning_level_m``)."""
        rows = super().registry_rows()
        rows["install"] = [json.dumps({"warning_level_m": w}) for w in self.warning.tolist()]
        return rows

    def level_m(self, dev: I64, seq: I64, t_us: I64) -> F64:
        """The water level for each (device, report, absolute time)."""
        ctx, seed, name = self.ctx, self.ctx.seed, self.ctx.name
        hours = (t_us - ctx.start_us) / 3.6e9
        day = (t_us + ctx.utc_offset_s * 1_000_000) // DAY_US
        h = local_hours(ctx, t_us)
        storm = uniform(seed, stream_id(f"storm:{name}"), dev, day) < self.opts.rain_probability
        s0 = 24 * uniform(seed, stream_id(f"storm0:{name}"), dev, day)
        # a storm: the level climbs for ~3 h after it starts, up to +1.4 m, then recedes
        rise = np.where(storm & (h >= s0), 1.4 * np.exp(-np.abs(h - s0 - 3) / 2.5), 0.0)
        tide = 0.4 * np.sin(2 * np.pi * hours / 12.42)  # semi-diurnal tide, 12.42 h
        jitter = 0.005 * normal(seed, stream_id(f"wln:{name}"), dev, seq)
        return np.asarray(self.base[dev] + tide + rise + jitter, dtype=np.float64)

    def frames(self, start_us: int, end_us: int) -> Frames:
        """One single-record pack per report due."""
        due = self.schedule.due(start_us, end_us)
        t = self.ctx.start_us + due.times_us
        level = np.round(self.level_m(due.devices, due.seqs, t), 3).tolist()
        bts = (t / 1e6).tolist()
        if self.format == "senml-cbor":
            payloads = [
                cbor2.dumps([{-3: bt, 0: "water_level", 1: "m", 2: lv}])
                for bt, lv in zip(bts, level, strict=True)
            ]
        else:
            payloads = [
                b'[{"bt":%r,"n":"water_level","u":"m","v":%r}]' % (bt, lv)
                for bt, lv in zip(bts, level, strict=True)
            ]
        return Frames(payloads, due.devices, due.seqs, t)
