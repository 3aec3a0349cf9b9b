"""What each kind of rule does with a batch: which rows, keyed by which subject, with which
extra columns; then the shared condition machine and the alert events it causes.

Each ``select_*`` turns the committed batch into a :class:`Selection` — rows sorted by
(subject key, time) with lazily computed columns — and :meth:`MachineRuntime.run` applies
the machine. Subjects are devices (key = internal id), vehicle tags (key = 64-bit hash of
the EPC, TID or plate) or road sections (key = gantry A id << 32 | gantry B id).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import shapely

from alerts import aqi as hj633
from alerts.attributes import DeviceAttributes
from alerts.batch import LazyColumns, TableBatch
from alerts.machine import ACTIVE, CLEARING, IDLE, NEVER, PENDING, SubjectStates, advance
from alerts.rules import (
    DEVICE_NUMBERS,
    DEVICE_TEXT,
    INSTALL_PREFIX,
    AqiRule,
    CompiledRule,
    CongestionRule,
    GeofenceRule,
    ParkingLotFullRule,
    RateRule,
    SectionSpeedRule,
    StaleRule,
    WatchlistRule,
)
from alerts.solar import is_daylight, sun_elevation
from alerts.traffic import Sections, Watchlist, tag_keys

Array = npt.NDArray[Any]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bytes = npt.NDArray[np.bytes_]
_RATE_PER_S = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert raised or cleared, with the frame time and value that did it."""

    rule: str
    severity: str
    state: str  # "raised" | "cleared"
    at_us: int
    subject: str | None  # device external id, tag, section; None: the device's (store fills)
    subject_key: int
    device_id: int | None
    value: float | None
    raised_at_us: int
    raised_value: float | None
    details: dict[str, Any] | None = None


@dataclass(slots=True)
class Selection:
    """Rows for the machine, sorted by (subject key, time)."""

    keys: I64
    t: I64
    cols: LazyColumns
    device_id: I64
    names: Bytes
    details: Callable[[int], dict[str, Any]] | None = None

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def take(self, keep: npt.NDArray[np.bool_]) -> Selection:
        """The rows selected by a mask (columns follow lazily)."""
        idx = np.flatnonzero(keep)
        src = self.cols
        cols = LazyColumns(
            int(idx.shape[0]),
            {k: (lambda k=k: src[k][idx]) for k in src},  # type: ignore[misc]
        )
        details = self.details
        return Selection(
            self.keys[idx],
            self.t[idx],
            cols,
            self.device_id[idx],
            self.names[idx],
            (lambda r: details(int(idx[r]))) if details else None,
        )


@dataclass
class Services:
    """What runtimes share within an engine: registry attributes, the local time zone, the
    batch's road sections (computed once)."""

    attributes: DeviceAttributes
    timezone: ZoneInfo
    sections: Callable[[], Sections | None]


def _float(a: Array) -> F64:
    out: F64 = np.asarray(a, dtype=np.float64)
    return out


def table_columns(ctx: TableBatch, idx: I64, attrs: DeviceAttributes) -> LazyColumns:
    """Columns of a table's selected rows, plus device attributes and the sun."""
    dev = ctx.device_id[idx]
    t = ctx.time[idx]
    makers: dict[str, Callable[[], Array]] = {}
    for name in (*ctx.rows.columns, "device"):
        if name != "device_id":
            makers[name] = lambda name=name: ctx.column(name)[idx]  # type: ignore[misc]
    _attribute_columns(makers, dev, attrs)
    own = ctx.has("lat") and ctx.has("lon")  # vehicles carry their position

    def where() -> tuple[F64, F64]:
        if own:
            return _float(ctx.column("lat")[idx]), _float(ctx.column("lon")[idx])
        return attrs.number("lat", dev), attrs.number("lon", dev)

    makers["sun_elevation"] = lambda: sun_elevation(t, *where())
    makers["daylight"] = lambda: is_daylight(t, *where())
    return LazyColumns(int(idx.shape[0]), makers)


def _attribute_columns(
    makers: dict[str, Callable[[], Array]], dev: I64, attrs: DeviceAttributes
) -> None:
    for name in DEVICE_TEXT:
        makers[name] = lambda n=name[7:]: attrs.texts(n, dev)  # type: ignore[misc]
    for name in DEVICE_NUMBERS:
        makers[name] = lambda n=name[7:]: attrs.number(n, dev)  # type: ignore[misc]
    for key in attrs.install_keys:
        col = INSTALL_PREFIX + key
        makers[col] = lambda col=col: attrs.number(col, dev)  # type: ignore[misc]


def _where(rule: CompiledRule, ctx: TableBatch, attrs: DeviceAttributes) -> I64:
    """The rows a rule's ``where`` selects; rules with the same ``where`` share the work."""
    if rule.where is None:
        return np.arange(ctx.n, dtype=np.int64)
    got = ctx.selections.get(rule.where.source)
    if got is None:
        if ctx.full is None:
            ctx.full = table_columns(ctx, np.arange(ctx.n, dtype=np.int64), attrs)
        got = ctx.selections[rule.where.source] = np.flatnonzero(rule.where.mask(ctx.full))
    return got


class MachineRuntime:
    """A rule of a machine kind: its subjects' states and how it selects rows."""

    def __init__(self, rule: CompiledRule, services: Services) -> None:
        self.rule = rule
        self.services = services
        self.states = SubjectStates()
        self.device_subjects = rule.kind not in (
            "section_speed",
            "congestion",
            "watchlist",
            "parking_lot_full",
        )
        self.names: dict[int, bytes] = {}
        """Names of non-device subjects with an open alert (for clears without a row)."""
        self.carry_v = np.empty(0, dtype=np.float64)  # rate/stale: last value per slot
        self.carry_t = np.empty(0, dtype=np.int64)  # rate: its time; stale: last change
        self.windows: tuple[I64, I64, F64] = (  # congestion: section key, time, travel s
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.float64),
        )
        self.late_rows = 0
        self.watchlist: Watchlist | None = None
        self.zone: Any = None
        if isinstance(rule.rule, WatchlistRule):
            self.watchlist = Watchlist(rule.path(rule.rule.list))
        if isinstance(rule.rule, GeofenceRule):
            self.zone = load_zone(rule)

    # -- selection per kind ----------------------------------------------------------------
    def select(self, batch: Mapping[str, TableBatch]) -> Selection | None:
        """This batch's rows for the machine, or None."""
        r = self.rule.rule
        attrs = self.services.attributes
        if isinstance(r, SectionSpeedRule | CongestionRule):
            return self._select_sections(batch)
        if isinstance(r, WatchlistRule):
            return self._select_watchlist(batch)
        if isinstance(r, ParkingLotFullRule):
            return self._select_lots(batch)
        ctx = batch.get(self.rule.tables[0])
        if ctx is None:
            return None
        idx = _where(self.rule, ctx, attrs)
        if idx.shape[0] == 0:
            return None
        if isinstance(r, AqiRule):
            return self._select_aqi(ctx, idx)
        cols = table_columns(ctx, idx, attrs)
        if isinstance(r, GeofenceRule):
            self._geofence_columns(cols, ctx, idx)
        dev = ctx.device_id[idx]
        return Selection(dev, ctx.time[idx], cols, dev, ctx.column("device")[idx])

    def _geofence_columns(self, cols: LazyColumns, ctx: TableBatch, idx: I64) -> None:
        r = self.rule.rule
        assert isinstance(r, GeofenceRule)
        zone = self.zone
        cols.add("in_zone", lambda: shapely.contains_xy(zone, cols["lon"], cols["lat"]))
        tz = self.services.timezone
        t = ctx.time[idx]
        cols.add("in_hours", lambda: in_hours(t, r.hours, tz))

    def _select_aqi(self, ctx: TableBatch, idx: I64) -> Selection | None:
        r = self.rule.rule
        assert isinstance(r, AqiRule)
        hj212 = ctx.table == "hj212_readings"
        names = r.pollutants or (hj633.HJ212_FACTORS if hj212 else hj633.ENV_METRICS)
        key_col = ctx.column("factor" if hj212 else "metric")[idx]
        value = _float(ctx.column("value")[idx])
        keep = np.zeros(idx.shape[0], dtype=np.bool_)
        if hj212:
            keep = np.isin(ctx.column("field")[idx], np.array([f.encode() for f in r.fields]))
        else:
            keep[:] = True
        per: dict[str, F64] = {}
        any_p = np.zeros(idx.shape[0], dtype=np.bool_)
        for p in hj633.POLLUTANTS:
            code = names.get(p)
            if code is None:
                continue
            m = keep & (key_col == code.encode())
            any_p |= m
            per[p] = np.where(m, hj633.iaqi(p, np.where(m, value, 0.0)), np.nan)
        rows = np.flatnonzero(any_p)
        if rows.shape[0] == 0:
            return None
        dev, t = ctx.device_id[idx][rows], ctx.time[idx][rows]
        start = np.ones(rows.shape[0], dtype=np.bool_)
        start[1:] = (dev[1:] != dev[:-1]) | (t[1:] != t[:-1])
        first = np.flatnonzero(start)
        group_idx = idx[rows[first]]
        cols = table_columns(ctx, group_idx, self.services.attributes)
        agg: dict[str, F64] = {}
        with np.errstate(invalid="ignore"):
            for p, v in per.items():
                agg[p] = np.fmax.reduceat(v[rows], first)
            stack = np.vstack(list(agg.values()))
            aqi = np.full(first.shape[0], np.nan)
            has = ~np.isnan(stack).all(axis=0)
            aqi[has] = np.nanmax(stack[:, has], axis=0)
        cols.add("aqi", lambda: aqi)
        cols.add("aqi_category", lambda: hj633.category(aqi))
        for p in hj633.POLLUTANTS:
            v = agg.get(p, np.full(first.shape[0], np.nan))
            cols.add(f"iaqi_{p}", lambda v=v: v)  # type: ignore[misc]
        return Selection(dev[first], t[first], cols, dev[first], ctx.column("device")[group_idx])

    def _select_sections(self, batch: Mapping[str, TableBatch]) -> Selection | None:
        r = self.rule.rule
        assert isinstance(r, SectionSpeedRule | CongestionRule)
        ctx = batch.get("vehicle_tag_reads")
        secs = self.services.sections()
        if ctx is None or secs is None or not len(secs):
            return None
        keep = (secs.distance_km >= r.min_km) & (secs.travel_s <= r.max_gap_s)
        if self.rule.where is not None:
            full = table_columns(ctx, secs.row, self.services.attributes)
            keep &= self.rule.where.mask(full)
        secs = secs.take(keep)
        if not len(secs):
            return None
        if isinstance(r, CongestionRule):
            return self._congestion(ctx, secs, r)
        attrs = self.services.attributes
        cols = table_columns(ctx, secs.row, attrs)
        speed = secs.distance_km / (secs.travel_s / 3600.0)
        limits = np.full(len(secs), r.limit_kmh)
        for road, limit in r.limits.items():
            limits[secs.road == road.encode()] = limit
        cols.add("speed_kmh", lambda: speed)
        cols.add("limit_kmh", lambda: limits)
        cols.add("distance_km", lambda: secs.distance_km)
        cols.add("travel_s", lambda: secs.travel_s)
        epc = ctx.column("epc")[secs.row]
        gantry_names: list[Bytes] = []

        def details(i: int) -> dict[str, Any]:
            if not gantry_names:  # for the whole batch, at its first event
                gantry_names.append(attrs.texts("external_id", secs.from_id))
                gantry_names.append(attrs.texts("external_id", secs.to_id))
            return {
                "from": gantry_names[0][i].decode(errors="replace"),
                "to": gantry_names[1][i].decode(errors="replace"),
                "road": secs.road[i].decode(errors="replace"),
                "distance_km": round(float(secs.distance_km[i]), 3),
                "travel_s": round(float(secs.travel_s[i]), 1),
                "limit_kmh": float(limits[i]),
            }

        return Selection(secs.tag, secs.time, cols, secs.to_id, epc, details)

    def _congestion(self, ctx: TableBatch, secs: Sections, r: CongestionRule) -> Selection:
        # every section's recent travel times live in three flat arrays (key, time, travel):
        # add the batch's, drop what fell out of each section's window, take the medians
        new_key = (secs.from_id << 32) | secs.to_id
        wk, wt, wv = self.windows
        key = np.concatenate([wk, new_key])
        t_all = np.concatenate([wt, secs.time])
        v_all = np.concatenate([wv, secs.travel_s])
        order = np.lexsort((t_all, key))
        key, t_all, v_all = key[order], t_all[order], v_all[order]
        first = _firsts(key)
        counts = np.diff(np.append(first, key.shape[0]))
        newest = np.maximum.reduceat(t_all, first)
        keep = t_all > np.repeat(newest, counts) - int(r.window_s * 1e6)
        key, t_all, v_all = key[keep], t_all[keep], v_all[keep]
        self.windows = (key, t_all, v_all)
        # medians of the sections seen in this batch (np.median's rule for even counts)
        present = np.isin(key, new_key)
        pk, pv = key[present], v_all[present]
        order = np.lexsort((pv, pk))
        pk, pv = pk[order], pv[order]
        first = _firsts(pk)
        counts = np.diff(np.append(first, pk.shape[0]))
        lo = first + (counts - 1) // 2
        hi = first + counts // 2
        median = (pv[lo] + pv[hi]) / 2
        keys = pk[first]
        t = np.maximum.reduceat(t_all[present][order], first)
        samples = counts.astype(np.float64)
        uk, at = np.unique(new_key, return_index=True)
        dist = secs.distance_km[at][np.searchsorted(uk, keys)]
        free_s = dist / r.free_flow_kmh * 3600.0
        ratio = median / free_s
        from_id, to_id = keys >> 32, keys & 0xFFFFFFFF
        attrs = self.services.attributes
        a, b = attrs.texts("external_id", from_id), attrs.texts("external_id", to_id)
        names = np.array([x + b">" + y for x, y in zip(a.tolist(), b.tolist(), strict=True)])
        cols = LazyColumns(int(keys.shape[0]), {})
        _attribute_columns(cols._makers, to_id, attrs)
        cols.add("time", lambda: t)
        cols.add("ratio", lambda: ratio)
        cols.add("median_s", lambda: median)
        cols.add("samples", lambda: samples)
        cols.add("free_flow_s", lambda: free_s)
        cols.add("device", lambda: names)
        return Selection(
            keys,
            t,
            cols,
            to_id,
            names,
            lambda i: {"median_s": round(float(median[i]), 1), "samples": int(samples[i])},
        )

    def _select_lots(self, batch: Mapping[str, TableBatch]) -> Selection | None:
        """One row per parking lot of the batch, its latest (subject: the lot's id)."""
        ctx = batch.get("parking_space_status")
        if ctx is None:
            return None
        idx = _where(self.rule, ctx, self.services.attributes)
        if idx.shape[0] == 0:
            return None
        lots = ctx.column("lot")[idx]
        keys, t = tag_keys(lots), ctx.time[idx]
        order = np.lexsort((t, keys))
        keys, idx = keys[order], idx[order]
        last = np.ones(idx.shape[0], dtype=np.bool_)
        last[:-1] = keys[1:] != keys[:-1]
        keys, pick = keys[last], idx[last]
        cols = table_columns(ctx, pick, self.services.attributes)
        names = ctx.column("lot")[pick]
        cols.add("device", lambda: names)
        occupied, capacity = ctx.column("lot_occupied")[pick], ctx.column("lot_capacity")[pick]
        return Selection(
            keys,
            ctx.time[pick],
            cols,
            ctx.device_id[pick],
            names,
            lambda i: {"occupied": int(occupied[i]), "capacity": int(capacity[i])},
        )

    def _select_watchlist(self, batch: Mapping[str, TableBatch]) -> Selection | None:
        r = self.rule.rule
        assert isinstance(r, WatchlistRule)
        assert self.watchlist is not None
        wl = self.watchlist
        parts: list[tuple[Bytes, I64, I64, Bytes]] = []
        for table in r.tables:
            ctx = batch.get(table)
            if ctx is None or len(wl) == 0:
                continue
            idx = _where(self.rule, ctx, self.services.attributes)
            cands = ["epc", "tid", "plate"] if table == "vehicle_tag_reads" else ["device"]
            width = max((ctx.column(c).dtype.itemsize for c in cands if ctx.has(c)), default=1)
            ident = np.zeros(idx.shape[0], dtype=f"S{width}")
            hit = np.zeros(idx.shape[0], dtype=np.bool_)
            for c in cands:
                if not ctx.has(c):
                    continue
                vals = ctx.column(c)[idx]
                m = wl.contains(vals) & ~hit
                ident[m] = vals[m]
                hit |= m
            if hit.any():
                parts.append((ident[hit], ctx.time[idx][hit], ctx.device_id[idx][hit], table))  # type: ignore[arg-type]
        if not parts:
            return None
        ident = np.concatenate([p[0] for p in parts])
        t = np.concatenate([p[1] for p in parts])
        dev = np.concatenate([p[2] for p in parts])
        keys = tag_keys(ident)
        order = np.lexsort((t, keys))
        ident, t, dev, keys = ident[order], t[order], dev[order], keys[order]
        cols = LazyColumns(int(keys.shape[0]), {})
        _attribute_columns(cols._makers, dev, self.services.attributes)
        cols.add("time", lambda: t)
        cols.add("listed", lambda: np.ones(keys.shape[0], dtype=np.bool_))
        cols.add("device", lambda: ident)
        for c in ("epc", "tid", "plate"):
            cols.add(c, lambda: ident)
        return Selection(keys, t, cols, dev, ident)

    # -- the machine -----------------------------------------------------------------------
    def run(self, sel: Selection) -> list[AlertEvent]:
        """Apply the machine to the selection; return its events."""
        cr, st = self.rule, self.states
        first = _firsts(sel.keys)
        slots = st.slots_for(sel.keys[first])
        self._grow_carry()
        # rows are in time order per subject: only a subject whose first row is late can
        # have late rows
        if (sel.t[first] < st.last[slots]).any():
            counts = np.diff(np.append(first, len(sel)))
            late = sel.t < np.repeat(st.last[slots], counts)
            self.late_rows += int(late.sum())
            sel = sel.take(~late)
            if not len(sel):
                return []
            first = _firsts(sel.keys)
            slots = st.slots_for(sel.keys[first])
        bounds = np.append(first, len(sel)).astype(np.int64)
        self._carry_columns(sel, slots, bounds)
        assert cr.when is not None
        when = cr.when.mask(sel.cols)
        clear = cr.clear.mask(sel.cols) if cr.clear is not None else ~when
        value = (
            np.asarray(cr.value.evaluate(sel.cols), dtype=np.float64)
            if cr.value is not None
            else np.full(len(sel), np.nan)
        )
        before = st.raised_at[slots].copy()
        before_value = st.raised_value[slots].copy()
        tr = advance(st, slots, bounds, sel.t, when, clear, value, cr.for_us, cr.clear_for_us)
        return self._events(sel, slots, bounds, tr, value, before, before_value)

    def _grow_carry(self) -> None:
        need = self.states.index.size
        if need > self.carry_v.shape[0]:
            cap = max(need, 2 * self.carry_v.shape[0], 1024)
            v = np.full(cap, np.nan)
            v[: self.carry_v.shape[0]] = self.carry_v
            t = np.full(cap, NEVER, dtype=np.int64)
            t[: self.carry_t.shape[0]] = self.carry_t
            self.carry_v, self.carry_t = v, t

    def _carry_columns(self, sel: Selection, slots: I64, bounds: I64) -> None:
        r = self.rule.rule
        if not isinstance(r, RateRule | StaleRule):
            return
        assert self.rule.of is not None
        v = np.asarray(self.rule.of.evaluate(sel.cols), dtype=np.float64)
        n = v.shape[0]
        first = bounds[:-1]
        last = bounds[1:] - 1
        is_first = np.zeros(n, dtype=np.bool_)
        is_first[first] = True
        prev_v = np.empty(n)
        prev_t = np.empty(n, dtype=np.int64)
        prev_v[1:], prev_t[1:] = v[:-1], sel.t[:-1]
        prev_v[first], prev_t[first] = self.carry_v[slots], self.carry_t[slots]
        t = sel.t
        if isinstance(r, RateRule):
            gap = (t - prev_t).astype(np.float64) / 1e6
            ok = (prev_t != NEVER) & (gap > 0) & (gap <= r.max_gap_s)
            with np.errstate(divide="ignore", invalid="ignore"):
                rate = np.where(ok, (v - prev_v) / gap * _RATE_PER_S[r.per.value], np.nan)
            sel.cols.add("rate", lambda: rate)
            self.carry_v[slots], self.carry_t[slots] = v[last], t[last]
            return
        # stale: when did the value last change (a subject's first row ever counts as one)
        with np.errstate(invalid="ignore"):
            changed = ~(np.abs(v - prev_v) <= r.tolerance)
        changed[is_first & (self.carry_t[slots][np.cumsum(is_first) - 1] == NEVER)] = True
        mark = np.where(changed | is_first, np.arange(n), 0)
        at = np.maximum.accumulate(mark)
        carried = is_first[at] & ~changed[at]
        since = np.where(carried, np.repeat(self.carry_t[slots], np.diff(bounds)), t[at])
        unchanged_s = (t - since).astype(np.float64) / 1e6
        sel.cols.add("unchanged_s", lambda: unchanged_s)
        self.carry_v[slots], self.carry_t[slots] = v[last], since[last]

    def _events(
        self,
        sel: Selection,
        slots: I64,
        bounds: I64,
        tr: Any,
        value: F64,
        before: I64,
        before_value: F64,
    ) -> list[AlertEvent]:
        n_up, n_down = tr.raised_rows.shape[0], tr.cleared_rows.shape[0]
        if not n_up and not n_down:
            return []
        rows = np.concatenate([tr.raised_rows, tr.cleared_rows])
        up = np.concatenate([np.ones(n_up, dtype=np.bool_), np.zeros(n_down, dtype=np.bool_)])
        order = np.argsort(rows, kind="stable")  # a subject's events alternate in row order
        rows, up = rows[order], up[order]
        group = np.searchsorted(bounds[:-1], rows, side="right") - 1
        prev_same = np.zeros(rows.shape[0], dtype=np.bool_)
        prev_same[1:] = group[1:] == group[:-1]
        prev_row = np.empty_like(rows)
        prev_row[0:1] = rows[0:1]
        prev_row[1:] = rows[:-1]
        # a clear closes the raise just before it in this batch, or the one open before it
        raised_at = np.where(up, sel.t[rows], np.where(prev_same, sel.t[prev_row], before[group]))
        raised_v = np.where(
            up, value[rows], np.where(prev_same, value[prev_row], before_value[group])
        )
        keys = sel.keys[rows]
        if not self.device_subjects:
            for k, r in zip(keys[up].tolist(), rows[up].tolist(), strict=True):
                self.names[k] = bytes(sel.names[r])
        cr = self.rule
        sev = cr.rule.severity.value
        details = sel.details
        out = [
            AlertEvent(
                rule=cr.name,
                severity=sev,
                state="raised" if u else "cleared",
                at_us=at,
                subject=name.decode(errors="replace"),
                subject_key=key,
                device_id=dev if dev >= 0 else None,
                value=None if math.isnan(v) else v,
                raised_at_us=ra,
                raised_value=None if math.isnan(rv) else rv,
                details=details(r) if details is not None else None,
            )
            for u, at, name, key, dev, v, ra, rv, r in zip(
                up.tolist(),
                sel.t[rows].tolist(),
                sel.names[rows].tolist(),
                keys.tolist(),
                sel.device_id[rows].tolist(),
                value[rows].tolist(),
                raised_at.tolist(),
                raised_v.tolist(),
                rows.tolist(),
                strict=True,
            )
        ]
        if not self.device_subjects:  # forget names of subjects no longer open
            st = self.states
            for s in tr.cleared_slots.tolist():
                if st.state[s] in (IDLE, PENDING):
                    self.names.pop(int(st.key_of_slot[s]), None)
        return out

    def next_due_us(self) -> int | None:
        """When the earliest open alert's ``clear_after`` falls due (None: nothing waits)."""
        after = self.rule.clear_after_us
        st = self.states
        if after is None or st.active == 0:
            return None
        open_ = st.open_slots()
        if open_.shape[0] == 0:
            return None
        return int(st.last_true[open_].min()) + after

    def auto_clear(self, clock_us: int) -> list[AlertEvent]:
        """Clear open alerts whose ``when`` last held ``clear_after`` ago (frame clock)."""
        after = self.rule.clear_after_us
        st = self.states
        if after is None or st.active == 0:
            return []
        open_ = st.open_slots()
        due = open_[st.last_true[open_] + after <= clock_us]
        if due.shape[0] == 0:
            return []
        out = []
        for s in due.tolist():
            key = int(st.key_of_slot[s])
            rv = float(st.raised_value[s])
            out.append(
                AlertEvent(
                    rule=self.rule.name,
                    severity=self.rule.rule.severity.value,
                    state="cleared",
                    at_us=int(st.last_true[s] + after),
                    subject=None
                    if self.device_subjects
                    else self.names.pop(key, b"").decode(errors="replace"),
                    subject_key=key,
                    device_id=key if self.device_subjects else None,
                    value=None,
                    raised_at_us=int(st.raised_at[s]),
                    raised_value=None if np.isnan(rv) else rv,
                    details={"reason": "clear_after"},
                )
            )
        st.state[due] = IDLE
        st.since[due] = NEVER
        st.active -= int(due.shape[0])
        return out

    # -- persistence -----------------------------------------------------------------------
    def arrays(self) -> dict[str, Array]:
        """Everything needed to resume, as arrays."""
        out, slots = self.states.dump()
        if self.carry_v.shape[0]:
            out["carry_v"], out["carry_t"] = self.carry_v[slots], self.carry_t[slots]
        names = [(k, v) for k, v in self.names.items()]
        out["name_keys"] = np.array([k for k, _ in names], dtype=np.int64)
        out["name_values"] = np.array([v for _, v in names] or [b""], dtype=np.bytes_)[: len(names)]
        out["win_key"], out["win_t"], out["win_v"] = self.windows
        return out

    def load_arrays(self, data: Mapping[str, Array]) -> None:
        """Resume from ``arrays()``."""
        st, slots = SubjectStates.restored(data)
        self.states = st
        st.active = int(((st.state == ACTIVE) | (st.state == CLEARING)).sum())
        if "carry_v" in data:
            self._grow_carry()
            self.carry_v[slots], self.carry_t[slots] = data["carry_v"], data["carry_t"]
        self.names = dict(
            zip(
                np.asarray(data["name_keys"]).tolist(),
                np.asarray(data["name_values"]).tolist(),
                strict=True,
            )
        )
        if "win_key" in data:
            self.windows = (data["win_key"], data["win_t"], data["win_v"])


def _firsts(keys: I64) -> I64:
    n = keys.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    start = np.ones(n, dtype=np.bool_)
    start[1:] = keys[1:] != keys[:-1]
    out: I64 = np.flatnonzero(start)
    return out


def in_hours(t: I64, hours: str | None, tz: ZoneInfo) -> npt.NDArray[np.bool_]:
    """Whether each UTC time falls in a local ``HH:MM-HH:MM`` window (across midnight when
    the end is before the start)."""
    if hours is None:
        return np.ones(t.shape[0], dtype=np.bool_)
    lo_s, hi_s = hours.split("-")
    lo = int(lo_s.split(":")[0]) * 60 + int(lo_s.split(":")[1])
    hi = int(hi_s.split(":")[0]) * 60 + int(hi_s.split(":")[1])
    hour_us = 3_600_000_000
    hours_of = t // hour_us
    uniq, inv = np.unique(hours_of, return_inverse=True)
    offsets = np.array(
        [
            (
                datetime.fromtimestamp(h * 3600, UTC).astimezone(tz).utcoffset() or _zero()
            ).total_seconds()
            for h in uniq.tolist()
        ],
        dtype=np.int64,
    )
    local_s = t // 1_000_000 + offsets[inv]
    minute = (local_s % 86400) // 60
    if lo <= hi:
        out: npt.NDArray[np.bool_] = (minute >= lo) & (minute < hi)
    else:
        out = (minute >= lo) | (minute < hi)
    return out


def _zero() -> Any:
    from datetime import timedelta

    return timedelta(0)


def load_zone(rule: CompiledRule) -> Any:
    """The rule's zone as a prepared shapely geometry (GeoJSON coordinates are lon, lat)."""
    r = rule.rule
    assert isinstance(r, GeofenceRule)
    geom: Any
    if r.polygon is not None:
        geom = shapely.Polygon(r.polygon)
    else:
        assert r.zone is not None
        doc = json.loads(rule.path(r.zone).read_text(encoding="utf-8"))
        feats = doc.get("features", [doc]) if isinstance(doc, dict) else []
        geoms = [shapely.geometry.shape(f.get("geometry", f)) for f in feats if isinstance(f, dict)]
        geom = shapely.union_all(geoms)
    shapely.prepare(geom)
    return geom


@dataclass
class AbsenceRuntime:
    """Offline devices: the newest arrival (or frame) time per device; raised by ``tick`` when
    it is older than the device's limit, cleared by the device's next frame."""

    rule: CompiledRule
    services: Services
    states: SubjectStates = field(default_factory=SubjectStates)

    def note(self, batch: Mapping[str, TableBatch]) -> list[AlertEvent]:
        """Frames in a batch: newest times; a device with an open offline alert is back."""
        ids = [ctx.device_id for ctx in batch.values()]
        times = [ctx.arrival for ctx in batch.values()]
        if not ids:
            return []
        dev = np.concatenate(ids)
        t = np.concatenate(times)
        order = np.lexsort((t, dev))
        dev, t = dev[order], t[order]
        first = _firsts(dev)
        last = np.append(first[1:], dev.shape[0]) - 1
        uniq = dev[first]
        keep = self._monitored(uniq)
        uniq, first, last = uniq[keep], first[keep], last[keep]
        if uniq.shape[0] == 0:
            return []
        st = self.states
        slots = st.slots_for(uniq)
        out = []
        back = np.flatnonzero(st.state[slots] == ACTIVE)
        for j in back.tolist():
            s = int(slots[j])
            rv = float(st.raised_value[s])
            out.append(
                AlertEvent(
                    rule=self.rule.name,
                    severity=self.rule.rule.severity.value,
                    state="cleared",
                    at_us=int(t[first[j]]),
                    subject=None,
                    subject_key=int(uniq[j]),
                    device_id=int(uniq[j]),
                    value=None,
                    raised_at_us=int(st.raised_at[s]),
                    raised_value=None if np.isnan(rv) else rv,
                    details={"reason": "back online"},
                )
            )
        st.state[slots[back]] = IDLE
        st.active -= int(back.shape[0])
        st.last[slots] = np.maximum(st.last[slots], t[last])
        return out

    def _monitored(self, ids: I64) -> npt.NDArray[np.bool_]:
        r = self.rule.rule
        if not r.profiles:
            return np.ones(ids.shape[0], dtype=np.bool_)
        prof = self.services.attributes.texts("profile", ids)
        out: npt.NDArray[np.bool_] = np.isin(prof, np.array([p.encode() for p in r.profiles]))
        return out

    def limits_us(self, ids: I64) -> F64:
        """How long each device may be silent, µs (NaN: never offline)."""
        times, fixed = self.rule.rule.limit()
        attrs = self.services.attributes
        if fixed:
            return np.full(ids.shape[0], fixed * 1e6)
        if times:
            out: F64 = attrs.number("report_interval_s", ids) * (times * 1e6)
            return out
        out = attrs.number("offline_after_s", ids) * 1e6
        return out

    def next_due_us(self) -> int | None:
        """When the earliest online device becomes offline if it stays silent (None: never)."""
        st = self.states
        n = st.index.size
        cand = np.flatnonzero((st.state[:n] == IDLE) & (st.last[:n] != NEVER))
        if cand.shape[0] == 0:
            return None
        limit = self.limits_us(st.key_of_slot[:n][cand])
        known = ~np.isnan(limit)
        if not known.any():
            return None
        return int((st.last[cand][known] + limit[known].astype(np.int64)).min())

    def shortest_limit_us(self, ids: I64) -> float:
        """The shortest silence allowed to any of these devices that this rule watches, µs
        (inf when it watches none of them)."""
        ids = ids[self._monitored(ids)]
        limit = self.limits_us(ids)
        limit = limit[~np.isnan(limit)]
        return float(limit.min()) if limit.shape[0] else math.inf

    def tick(self, now_us: int) -> list[AlertEvent]:
        """Raise offline alerts for devices silent past their limit at ``now_us``."""
        st = self.states
        n = st.index.size
        if n == 0:
            return []
        cand = np.flatnonzero((st.state[:n] == IDLE) & (st.last[:n] != NEVER))
        if cand.shape[0] == 0:
            return []
        key_of = st.key_of_slot[:n]
        ids = key_of[cand]
        limit = self.limits_us(ids)
        with np.errstate(invalid="ignore"):
            due = st.last[cand] + np.nan_to_num(limit, nan=np.inf) <= now_us
        due &= ~np.isnan(limit)
        hit = cand[due]
        if hit.shape[0] == 0:
            return []
        lim = limit[due]
        at = st.last[hit] + lim.astype(np.int64)
        st.state[hit] = ACTIVE
        st.raised_at[hit] = at
        st.raised_value[hit] = lim / 1e6
        st.active += int(hit.shape[0])
        sev = self.rule.rule.severity.value
        return [
            AlertEvent(
                rule=self.rule.name,
                severity=sev,
                state="raised",
                at_us=int(a),
                subject=None,
                subject_key=int(d),
                device_id=int(d),
                value=float(v),
                raised_at_us=int(a),
                raised_value=float(v),
                details={"silent_s": float(v)},
            )
            for d, a, v in zip(key_of[hit].tolist(), at.tolist(), (lim / 1e6).tolist(), strict=True)
        ]

    def seed(self, ids: I64, last_us: I64) -> None:
        """Start from known last-seen times (the registry's), keeping newer ones."""
        if ids.shape[0] == 0:
            return
        keep = self._monitored(ids)
        ids, last_us = ids[keep], last_us[keep]
        uniq, first = np.unique(ids, return_index=True)
        slots = self.states.slots_for(uniq)
        self.states.last[slots] = np.maximum(self.states.last[slots], last_us[first])

    def arrays(self) -> dict[str, Array]:
        """Everything needed to resume."""
        return self.states.dump()[0]

    def load_arrays(self, data: Mapping[str, Array]) -> None:
        """Resume from ``arrays()``."""
        st = self.states = SubjectStates.restored(data)[0]
        st.active = int((st.state == ACTIVE).sum())
