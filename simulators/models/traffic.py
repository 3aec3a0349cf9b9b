"""Road gantries reading vehicle electronic tags: vehicles travelling corridors.

Each road has gantries every ``spacing_km``; vehicles enter at its start (a Poisson stream of
``flow_per_hour``, ×``rush_flow_factor`` in rush hours) and drive its length at their own
speed (normal around ``speed_kmh``; slowed by ``rush_speed_factor`` in rush hours, which is
what the congestion rule sees); a fraction are speeders (×1.4 outside rush hours) and a few
carry a watch-listed tag. A gantry reports every interval with the reads of the vehicles that
passed it (``tagread-json`` events, or an LLRP RO_ACCESS_REPORT). Vehicles are generated per
second of device time from keyed draws, so any window is reproducible on its own.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from decoders.llrp import encode_report
from simulators.keyed import bits, normal, stream_id, uniform
from simulators.models.base import F64, I64, Frames, GroupContext, Options, id_block, local_hours

CHUNK_S = 256  # vehicles are generated (and cached) 256 seconds of entries at a time
MAX_PER_SECOND = 12
ROAD_NAMES = ("G4", "S1", "G15", "G94", "S29", "G25")
# entry time (s since the epoch), speed (km/h), tag bits, watch-listed
_Vehicles = tuple[F64, F64, npt.NDArray[np.uint64], npt.NDArray[np.bool_]]


class GantryOptions(Options):
    """Options of the gantry model (``count`` = roads × gantries per road)."""

    roads: int = Field(2, ge=1, le=100, description="roads; names G4, S1, G15… then R<n>")
    spacing_km: float = Field(2.5, gt=0, description="distance between gantries on a road")
    flow_per_hour: float = Field(1800, gt=0, le=20_000, description="vehicles entering a road")
    speed_kmh: float = Field(80, gt=10, description="mean speed outside rush hours")
    speed_sd_kmh: float = Field(12, ge=0, description="standard deviation of speeds")
    speeders: float = Field(0.02, ge=0, le=1, description="fraction driving 1.4× faster")
    watchlisted: float = Field(0.001, ge=0, le=1, description="fraction with a listed tag")
    rush_hours: list[tuple[float, float]] = Field(
        default_factory=lambda: [(7.5, 9.0), (17.5, 19.0)], description="local [from, to) hours"
    )
    rush_flow_factor: float = Field(1.8, gt=0, description="flow multiplier in rush hours")
    rush_speed_factor: float = Field(0.45, gt=0, le=1, description="speed multiplier then")

    @model_validator(mode="after")
    def _hours(self) -> GantryOptions:
        for a, b in self.rush_hours:
            if not 0 <= a < b <= 24:
                raise ValueError(f"rush hour [{a}, {b}) must satisfy 0 <= from < to <= 24")
        return self


class Gantry:
    """Gantry tag readers along roads."""

    name: ClassVar[str] = "gantry"
    kind: ClassVar[str] = "gantry"
    formats: ClassVar[tuple[str, ...]] = ("tagread-json", "llrp")
    table: ClassVar[str] = "vehicle_tag_reads"
    resolution_us: ClassVar[int] = 1_000  # tagread-json times are epoch milliseconds
    options: ClassVar[type[Options]] = GantryOptions

    def __init__(self, ctx: GroupContext, options: GantryOptions) -> None:
        if ctx.count % options.roads:
            raise ValueError(f"count {ctx.count} is not a multiple of roads ({options.roads})")
        self.ctx, self.opts = ctx, options
        self.per_road = ctx.count // options.roads
        self.road_names = [
            ROAD_NAMES[r] if r < len(ROAD_NAMES) else f"R{r + 1}" for r in range(options.roads)
        ]
        self.length_km = (self.per_road - 1) * options.spacing_km
        self.prefix = f"gt{id_block(ctx, 6)}"
        self.max_travel_s = (
            self.length_km
            / (max(5.0, options.speed_kmh - 4 * options.speed_sd_kmh) * options.rush_speed_factor)
            * 3600
            + 1
        )

    @property
    def format(self) -> str:
        """The decoder its frames are for."""
        return self.ctx.format or self.formats[0]

    def external_ids(self) -> list[str]:
        """``gt<group><seed>-<road>-<nn>`` for every gantry, road by road."""
        return [
            f"{self.prefix}-{road}-{k:02d}"
            for road in self.road_names
            for k in range(self.per_road)
        ]

    def registry_rows(self) -> dict[str, list[Any]]:
        """Road, position along it (km) and place of every gantry (section speed needs them)."""
        ctx = self.ctx
        lat: list[float] = []
        lon: list[float] = []
        road: list[str] = []
        km: list[float] = []
        for r, name in enumerate(self.road_names):
            heading = 2 * math.pi * r / len(self.road_names)
            for k in range(self.per_road):
                x = k * self.opts.spacing_km
                lat.append(round(ctx.city_lat + x * math.cos(heading) / 111.32, 6))
                lon.append(
                    round(
                        ctx.city_lon
                        + x * math.sin(heading) / (111.32 * math.cos(math.radians(ctx.city_lat))),
                        6,
                    )
                )
                road.append(name)
                km.append(round(x, 3))
        return {
            "district": ["futian"] * ctx.count,
            "lat": lat,
            "lon": lon,
            "road": road,
            "road_km": km,
        }

    # -- vehicles --------------------------------------------------------------------------
    def _rush(self, t_s: F64) -> npt.NDArray[np.bool_]:
        h = local_hours(self.ctx, (t_s * 1e6).astype(np.int64))
        rush = np.zeros(h.shape, dtype=np.bool_)
        for a, b in self.opts.rush_hours:
            rush |= (h >= a) & (h < b)
        return rush

    @lru_cache(maxsize=64)  # noqa: B019 - one model per run; the cache dies with it
    def _chunk(self, road: int, chunk: int) -> _Vehicles:
        """Entry time (s), speed (km/h), tag bits and watch-list flag of the vehicles that
        enter ``road`` in seconds [chunk × 256, (chunk + 1) × 256) after the epoch."""
        o, seed = self.opts, self.ctx.seed
        secs = np.arange(chunk * CHUNK_S, (chunk + 1) * CHUNK_S, dtype=np.int64)
        rush = self._rush(secs.astype(np.float64))
        lam = o.flow_per_hour / 3600 * np.where(rush, o.rush_flow_factor, 1.0)
        # Poisson counts by inversion of keyed uniforms
        u = uniform(seed, stream_id("veh:n"), road, secs)
        k = np.zeros(secs.shape[0], dtype=np.int64)
        p = np.exp(-lam)
        cdf = p.copy()
        for step in range(1, MAX_PER_SECOND + 1):
            k += u > cdf
            p = p * lam / step
            cdf = cdf + p
        sec = np.repeat(secs, k)
        nth = np.arange(sec.shape[0]) - np.repeat(np.cumsum(k) - k, k)  # index within its second
        vid = sec * 16 + nth
        entry = sec + uniform(seed, stream_id("veh:t"), road, vid)
        speed = o.speed_kmh + o.speed_sd_kmh * normal(seed, stream_id("veh:v"), road, vid)
        in_rush = self._rush(entry)
        speeder = uniform(seed, stream_id("veh:fast"), road, vid) < o.speeders
        speed = np.where(
            in_rush, speed * o.rush_speed_factor, np.where(speeder, speed * 1.4, speed)
        )
        speed = np.clip(speed, 5, 200)
        tags = bits(seed, stream_id("veh:epc"), road, vid)
        watch = uniform(seed, stream_id("veh:watch"), road, vid) < o.watchlisted
        return entry, speed, tags, watch

    def _vehicles(self, road: int, from_s: float, to_s: float) -> _Vehicles:
        """The vehicles entering ``road`` in (from_s, to_s]."""
        first, last = int(from_s // CHUNK_S), int(to_s // CHUNK_S)
        parts = [self._chunk(road, c) for c in range(first, last + 1)]
        entry, speed, tags, watch = (np.concatenate([p[i] for p in parts]) for i in range(4))
        keep = (entry > from_s) & (entry <= to_s)
        return entry[keep], speed[keep], tags[keep], watch[keep]

    @staticmethod
    def epc(tags: npt.NDArray[np.uint64]) -> list[str]:
        """EPC-96 hex of tag bits (a fixed header for the simulated issuer, then 64 bits)."""
        return [f"E2801160{t:016X}" for t in tags.tolist()]

    def watchlist(self, duration_s: float) -> list[str]:
        """Every watch-listed tag that enters a road during the run."""
        start = self.ctx.start_us / 1e6
        out: list[str] = []
        for r in range(len(self.road_names)):
            _, _, tags, watch = self._vehicles(r, start - self.max_travel_s, start + duration_s)
            out += self.epc(tags[watch])
        return out

    # -- frames ----------------------------------------------------------------------------
    def frames(self, start_us: int, end_us: int) -> Frames:
        """Each gantry's report per interval that ended in the window (none when no tag)."""
        ctx = self.ctx
        iv = ctx.interval_us
        w0, w1 = start_us // iv + 1, end_us // iv  # report windows ending in (start, end]
        if w1 < w0:
            empty = np.empty(0, dtype=np.int64)
            return Frames([], empty, empty, empty)
        lo_us, hi_us = ctx.start_us + (w0 - 1) * iv, ctx.start_us + w1 * iv
        ids = self.external_ids()
        payloads: list[bytes] = []
        devs: list[int] = []
        seqs: list[int] = []
        times: list[int] = []
        for r in range(len(self.road_names)):
            entry, speed, tags, _ = self._vehicles(r, lo_us / 1e6 - self.max_travel_s, hi_us / 1e6)
            for k in range(self.per_road):
                passed_s = entry + k * self.opts.spacing_km / speed * 3600
                passed = (np.round(passed_s * 1000) * 1000).astype(np.int64)  # ms, as sent
                sel = np.flatnonzero((passed > lo_us) & (passed <= hi_us))
                if not sel.shape[0]:
                    continue
                first_us = passed[sel]
                window = (first_us - ctx.start_us - 1) // iv + 1
                order = np.lexsort((first_us, window))
                dev = r * self.per_road + k
                self._reports(
                    dev,
                    ids[dev],
                    window[order],
                    first_us[order],
                    tags[sel][order],
                    (payloads, devs, seqs, times),
                )
        return Frames(
            payloads,
            np.asarray(devs, dtype=np.int64),
            np.asarray(seqs, dtype=np.int64),
            np.asarray(times, dtype=np.int64),
        )

    def _reports(
        self,
        dev: int,
        reader: str,
        window: I64,
        first_us: I64,
        tags: npt.NDArray[np.uint64],
        out: tuple[list[bytes], list[int], list[int], list[int]],
    ) -> None:
        payloads, devs, seqs, times = out
        seed = self.ctx.seed
        epcs = self.epc(tags)
        dwell = (200 + 400 * uniform(seed, stream_id("read:dwell"), tags)).astype(np.int64)
        rssi = (-50 - 20 * uniform(seed, stream_id("read:rssi"), tags)).astype(np.int64)
        antenna = 1 + (tags % np.uint64(4)).astype(np.int64)
        counts = 2 + (tags >> np.uint64(8)) % np.uint64(5)
        cuts = np.flatnonzero(np.diff(window)) + 1
        for part in np.split(np.arange(window.shape[0]), cuts):
            reads = [
                {
                    "epc": epcs[i],
                    "antenna": int(antenna[i]),
                    "rssi": int(rssi[i]),
                    "first_us": int(first_us[i]),
                    "last_us": int(first_us[i] + dwell[i] * 1000),
                    "count": int(counts[i]),
                }
                for i in part.tolist()
            ]
            if self.format == "llrp":
                payload = encode_report(reads, message_id=int(window[part[0]]) & 0xFFFFFFFF)
            else:
                payload = json.dumps(
                    [
                        {
                            "reader": reader,
                            "antenna": r["antenna"],
                            "epc": r["epc"],
                            "rssi": r["rssi"],
                            "first_seen": int(r["first_us"]) // 1000,
                            "last_seen": int(r["last_us"]) // 1000,
                            "count": r["count"],
                        }
                        for r in reads
                    ],
                    separators=(",", ":"),
                ).encode()
            payloads.append(payload)
            devs.append(dev)
            seqs.append(int(window[part[0]]))
            times.append(int(first_us[part[0]]))
