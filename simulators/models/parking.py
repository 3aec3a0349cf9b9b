"""Parking lots: cars arrive and leave over the day (busy hours, a football match), and each
space's geomagnetic sensor reports it (cityflux parking-sensor frame v1).

The group's spaces are split into ``lots`` lots of consecutive devices. Time is cut, for each
space, into parking slots of ``slot_s`` (shifted by a per-space offset): in each slot the space
is taken with the probability of its lot's occupancy then — the ``busy`` profile by local
hour, or ``match_occupancy`` for the ``match_lots`` while a match is on (``match_at_s`` after
the run's start, ``match_hours`` long: the crowd fills the stadium car parks). So a space's
state at any time is a pure function of the seed, and so are its frames:

- a report of its state one second into the run (the sensor's state when the run begins);
- a heartbeat every ``interval_s`` (the group's interval);
- on every change of state, a report, and ``confirm_s`` later a second one (the sensor
  re-samples before it trusts the change: two reports make the service's default debounce);
- in a fraction ``flap_rate`` of slots, mid-slot, a spurious report of the other state and a
  correction two seconds later (a truck passing, a car manoeuvring): the service must not
  count it.

``lots_at(t)`` gives what the lots hold at a time as the service, debouncing with two
consecutive reports, must see it: a change counts once its second report (the confirmation or
a heartbeat) has been sent.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from decoders.parking import FLAG_HEARTBEAT
from decoders.parking import FRAME as PARKING_FRAME
from decoders.parking import MAGIC as PARKING_MAGIC
from simulators.keyed import normal, stream_id, uniform
from simulators.models.base import (
    I64,
    Frames,
    GroupContext,
    Options,
    compact_frames,
    id_block,
    local_hours,
    places,
)
from simulators.models.environment import _Periodic

S = 1_000_000
# fraction of spaces taken, by local hour: quiet nights, busy office hours, evening shopping
BUSY = (
    0.15, 0.12, 0.10, 0.10, 0.10, 0.12, 0.25, 0.50, 0.75, 0.85, 0.88, 0.90,
    0.88, 0.88, 0.90, 0.88, 0.82, 0.75, 0.70, 0.65, 0.55, 0.40, 0.30, 0.20,
)  # fmt: skip
INITIAL_US = S  # the first report, one second into the run
SPURIOUS_GAP_US = 2 * S  # a spurious report's correction follows this much later
# variants: what a frame is (heartbeat, change, confirmation, spurious, correction, first)
HEARTBEAT, CHANGE, CONFIRM, SPURIOUS, CORRECTION, FIRST = range(6)


class ParkingOptions(Options):
    """Options of the parking-space sensor model."""

    lots: int = Field(4, ge=1, le=10_000, description="lots the group's spaces are split into")
    slot_s: float = Field(900.0, ge=60, description="a parking slot: cars come and go per slot")
    confirm_s: float = Field(5.0, ge=1, le=30, description="a change's second report after")
    flap_rate: float = Field(0.02, ge=0, le=1, description="slots with a spurious report")
    busy: list[float] = Field(
        default_factory=lambda: list(BUSY),
        min_length=24,
        max_length=24,
        description="fraction of spaces taken, by local hour 0-23",
    )
    match_lots: list[int] = Field(
        default_factory=lambda: [0], description="lots by the stadium (indices)"
    )
    match_at_s: float | None = Field(
        None, ge=0, description="a football match begins this long after the run's start"
    )
    match_hours: float = Field(3.0, gt=0, description="how long the stadium lots stay full")
    match_occupancy: float = Field(0.99, ge=0, le=1, description="taken during the match")


class ParkingSpace(_Periodic):
    """A parking-space sensor (cityflux parking-sensor frame v1) in one of the group's lots."""

    name: ClassVar[str] = "parking-space"
    kind: ClassVar[str] = "parking"
    formats: ClassVar[tuple[str, ...]] = ("parking-sensor",)
    table: ClassVar[str] = "parking_readings"
    options: ClassVar[type[Options]] = ParkingOptions

    def __init__(self, ctx: GroupContext, options: ParkingOptions) -> None:
        super().__init__(ctx, options)
        if any(i >= options.lots for i in options.match_lots):
            raise ValueError(f"match_lots name lots beyond the {options.lots} of the group")
        n = np.arange(ctx.count)
        self.opts: ParkingOptions = options
        self.imei = 862_000_000_000_000 + int(id_block(ctx, 7)) * 100_000_000
        self.lot_of = n * options.lots // max(ctx.count, 1)
        self.slot_us = round(options.slot_s * S)
        steps = self.slot_us // S - 2
        u = uniform(ctx.seed, stream_id(f"park.offset:{ctx.name}"), n)
        # boundaries fall on whole seconds after the first report (offset in [2 s, slot))
        self.offset_us = (2 + np.floor(u * steps).astype(np.int64)) * S
        self.confirm_us = round(options.confirm_s * S)
        self.lot_lat, self.lot_lon = places(
            GroupContext(**{**_fields(ctx), "count": options.lots, "name": f"{ctx.name}.lots"})
        )
        self.prefix = f"{ctx.name}-lot"

    # -- identity --------------------------------------------------------------------------
    def external_ids(self) -> list[str]:
        """15-digit IMEIs of the sensors' NB-IoT modules."""
        return [str(self.imei + i) for i in range(self.ctx.count)]

    def lot_names(self) -> list[str]:
        """The lots' ids, in order."""
        return [f"{self.prefix}{k + 1}" for k in range(self.opts.lots)]

    def lots(self) -> list[dict[str, Any]]:
        """The lots for the registry: id, name, capacity (its spaces), position."""
        counts = np.bincount(self.lot_of, minlength=self.opts.lots).tolist()
        stadium = set(self.opts.match_lots)
        return [
            {
                "lot": name,
                "name": f"{'Stadium' if k in stadium else 'Car park'} {k + 1}",
                "capacity": counts[k],
                "lat": float(self.lot_lat[k]),
                "lon": float(self.lot_lon[k]),
            }
            for k, name in enumerate(self.lot_names())
            if counts[k]
        ]

    def registry_rows(self) -> dict[str, list[Any]]:
        """District, the lot's position, the lot and the space's label."""
        rows = super().registry_rows()
        names = self.lot_names()
        rows["lat"] = [float(self.lot_lat[k]) for k in self.lot_of.tolist()]
        rows["lon"] = [float(self.lot_lon[k]) for k in self.lot_of.tolist()]
        rows["lot"] = [names[k] for k in self.lot_of.tolist()]
        first = np.searchsorted(self.lot_of, self.lot_of)  # lots are consecutive devices
        rows["space"] = [f"S{i + 1:04d}" for i in (np.arange(self.ctx.count) - first).tolist()]
        return rows

    # -- the state of every space ------------------------------------------------------------
    def _slot(self, d: I64, t_us: I64) -> I64:
        """Each space's slot at relative times (slot -1 began before the run)."""
        return np.asarray((t_us - self.offset_us[d]) // self.slot_us, dtype=np.int64)

    def _taken(self, d: I64, k: I64) -> np.ndarray:
        """Whether space ``d`` is taken in its slot ``k``."""
        ctx, o = self.ctx, self.opts
        begins = ctx.start_us + self.offset_us[d] + k * self.slot_us
        p = np.asarray(o.busy)[np.floor(local_hours(ctx, begins)).astype(np.int64) % 24]
        if o.match_at_s is not None:
            rel = begins - ctx.start_us
            on = (rel >= o.match_at_s * S) & (rel < (o.match_at_s + o.match_hours * 3600) * S)
            p = np.where(on & np.isin(self.lot_of[d], o.match_lots), o.match_occupancy, p)
        u = uniform(ctx.seed, stream_id(f"park.taken:{ctx.name}"), d, k)
        return np.asarray(u < p)

    def occupied(self, d: I64, t_us: I64) -> np.ndarray:
        """The true state of spaces ``d`` at relative times ``t_us``."""
        return self._taken(d, self._slot(d, t_us))

    def debounced(self, t_us: int) -> np.ndarray:
        """Every space's state at relative time ``t_us`` as a service debouncing with two
        consecutive reports holds it (False for a space that has not reported yet)."""
        if t_us < INITIAL_US:
            return np.zeros(self.ctx.count, dtype=np.bool_)
        d = np.arange(self.ctx.count, dtype=np.int64)
        k = self._slot(d, np.full(d.shape, t_us))
        now, before = self._taken(d, k), self._taken(d, k - 1)
        began = self.offset_us + k * self.slot_us
        # the next heartbeat after the change
        phase = self.schedule.phase_us(d)
        interval = self.ctx.interval_us
        after = np.where(began < phase, phase, phase + ((began - phase) // interval + 1) * interval)
        confirmed = (began + self.confirm_us <= t_us) | (after <= t_us) | (began < INITIAL_US)
        return np.where((now == before) | confirmed, now, before)

    def lots_at(self, t_us: int) -> list[dict[str, Any]]:
        """Each lot's capacity and spaces taken at relative time ``t_us`` (debounced)."""
        taken = np.bincount(
            self.lot_of, weights=self.debounced(t_us), minlength=self.opts.lots
        ).astype(np.int64)
        caps = {x["lot"]: x["capacity"] for x in self.lots()}
        return [
            {"lot": name, "capacity": caps[name], "occupied": int(taken[k])}
            for k, name in enumerate(self.lot_names())
            if name in caps
        ]

    # -- frames ------------------------------------------------------------------------------
    def frames(self, start_us: int, end_us: int) -> Frames:
        """The window's reports (relative device times in (start, end]), in time order."""
        ctx, o = self.ctx, self.opts
        n = ctx.count
        dev: list[I64] = []
        tim: list[I64] = []
        state: list[np.ndarray] = []
        var: list[I64] = []
        all_d = np.arange(n, dtype=np.int64)
        if start_us < INITIAL_US <= end_us:
            t = np.full(n, INITIAL_US, dtype=np.int64)
            dev.append(all_d)
            tim.append(t)
            state.append(self.occupied(all_d, t))
            var.append(np.full(n, FIRST, dtype=np.int64))
        due = self.schedule.due(start_us, end_us)
        if len(due):
            dev.append(due.devices)
            tim.append(due.times_us)
            state.append(self.occupied(due.devices, due.times_us))
            var.append(np.full(len(due), HEARTBEAT, dtype=np.int64))
        # slot boundaries whose change, confirmation, spurious report or correction falls in
        # the window: slots from the one before the window's start to the one at its end
        lead = self.confirm_us + self.slot_us // 2 + SPURIOUS_GAP_US
        k0 = self._slot(all_d, np.full(n, max(start_us - lead, -self.slot_us)))
        k1 = self._slot(all_d, np.full(n, end_us))
        span = int((k1 - k0).max()) + 1 if n else 0
        for j in range(span):
            k = k0 + j
            live = k <= k1
            d, k = all_d[live], k[live]
            began = self.offset_us[d] + k * self.slot_us
            now, before = self._taken(d, k), self._taken(d, k - 1)
            changed = (now != before) & (began >= INITIAL_US)
            flap = uniform(ctx.seed, stream_id(f"park.flap:{ctx.name}"), d, k) < o.flap_rate
            mid = began + self.slot_us // 2
            for times, what, value, pick in (
                (began, CHANGE, now, changed),
                (began + self.confirm_us, CONFIRM, now, changed),
                (mid, SPURIOUS, ~now, flap & (mid >= INITIAL_US)),
                (mid + SPURIOUS_GAP_US, CORRECTION, now, flap & (mid >= INITIAL_US)),
            ):
                inside = pick & (times > start_us) & (times <= end_us)
                if inside.any():
                    dev.append(d[inside])
                    tim.append(times[inside])
                    state.append(value[inside])
                    var.append(np.full(int(inside.sum()), what, dtype=np.int64))
        if not dev:
            empty = np.zeros(0, dtype=np.int64)
            return Frames([], empty, empty, empty, empty)
        d, t, occ, v = (np.concatenate(x) for x in (dev, tim, state, var))
        order = np.lexsort((v, d, t))
        d, t, occ, v = d[order], t[order], occ[order], v[order]
        # per-device counters that tell the frames apart: the time in seconds and the variant
        seqs = (t // S) * 8 + v
        noise = normal(ctx.seed, stream_id(f"park.mag:{ctx.name}"), d, seqs)
        payloads = compact_frames(
            PARKING_FRAME,
            {
                "magic": PARKING_MAGIC,
                "version": 1,
                "imei": self.imei + d,
                "time": (ctx.start_us + t) // S,
                "seq": seqs & 0xFFFF,
                "occupancy": occ,
                "flags": np.where(v == HEARTBEAT, FLAG_HEARTBEAT, 0),
                "mag_x": np.round(120 + 30 * noise + 150 * occ),
                "mag_y": np.round(-35 + 20 * noise),
                "mag_z": np.round(410 + 40 * noise + 220 * occ),
                "battery": 3600 - (d % 200),
                "temperature": np.round(15 + 3 * noise),
            },
            len(d),
        )
        return Frames(payloads, d, seqs, ctx.start_us + t, v)


def _fields(ctx: GroupContext) -> dict[str, Any]:
    return {f: getattr(ctx, f) for f in GroupContext.__dataclass_fields__}
