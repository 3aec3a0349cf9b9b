"""The rules engine: threshold rules with duration and hysteresis, for every device at once.

Per rule, per device, a small state machine in parallel numpy arrays (sparse: only devices
the rule has seen)::

    idle ──when──▶ pending ──when held ≥ for──▶ ACTIVE (raised) ──clear──▶ clearing
      ▲              │ not when                    ▲                          │
      └──────────────┘                             └──────── not clear ───────┤
      ◀──────────────────────── clear held ≥ clear_for (cleared) ─────────────┘

A batch is evaluated in frame time: its rows are sorted by (device, time) and walked by rank
within each device — step k advances every device by its k-th row at once — so a batch of
10,000 readings from 1,000 devices costs ten vectorised steps, never a Python loop per row.
Replays give the same alerts because only the frames' own times are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from alerts.rules import CompiledRule
from ingest.batch import TableRows

IDLE, PENDING, ACTIVE, CLEARING = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert raised or cleared, with the frame time and value that did it."""

    rule: str
    device_id: int
    device: str
    state: str  # "raised" | "cleared"
    at_us: int
    value: float | None
    severity: str


class _RuleState:
    """Per-device state of one rule, kept sorted by device id."""

    __slots__ = ("devices", "since", "state")

    def __init__(self) -> None:
        self.devices = np.empty(0, dtype=np.int64)
        self.state = np.empty(0, dtype=np.int8)
        self.since = np.empty(0, dtype=np.int64)

    def slots(self, devices: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Positions of ``devices`` (unique), adding the new ones as idle."""
        pos = np.searchsorted(self.devices, devices)
        known = (pos < self.devices.shape[0]) & (
            self.devices[np.minimum(pos, max(self.devices.shape[0] - 1, 0))] == devices
            if self.devices.shape[0]
            else np.zeros(devices.shape[0], dtype=bool)
        )
        if not known.all():
            new = devices[~known]
            merged = np.concatenate([self.devices, new])
            order = np.argsort(merged, kind="stable")
            self.devices = merged[order]
            self.state = np.concatenate([self.state, np.zeros(new.shape[0], np.int8)])[order]
            self.since = np.concatenate([self.since, np.zeros(new.shape[0], np.int64)])[order]
            pos = np.searchsorted(self.devices, devices)
        return pos


class Engine:
    """Evaluates compiled rules on committed rows; returns the alert events they cause."""

    def __init__(self, rules: list[CompiledRule]) -> None:
        self.rules = rules
        self._state = {r.rule.name: _RuleState() for r in rules}

    def active(self, rule: str) -> npt.NDArray[np.int64]:
        """Device ids with an active (raised, not cleared) alert for ``rule``."""
        st = self._state[rule]
        out: npt.NDArray[np.int64] = st.devices[(st.state == ACTIVE) | (st.state == CLEARING)]
        return out

    def evaluate(self, rows: TableRows, device_ids: npt.NDArray[np.int64]) -> list[AlertEvent]:
        """Run every rule of ``rows.table`` over the rows; events in frame-time order."""
        events: list[AlertEvent] = []
        env: dict[str, npt.NDArray[Any]] | None = None
        for rule in self.rules:
            if rule.rule.table != rows.table or not len(rows):
                continue
            if env is None:
                env = _columns(rows)
            events += self._evaluate(rule, rows, env, device_ids)
        events.sort(key=lambda e: (e.at_us, e.rule, e.device_id))
        return events

    def _evaluate(
        self,
        cr: CompiledRule,
        rows: TableRows,
        env: dict[str, npt.NDArray[Any]],
        device_ids: npt.NDArray[np.int64],
    ) -> list[AlertEvent]:
        sel = cr.where.mask(env) if cr.where else np.ones(len(rows), dtype=bool)
        if not sel.any():
            return []
        when = cr.when.mask(env)[sel]
        clear = cr.clear.mask(env)[sel] if cr.clear else ~when
        value = (
            np.asarray(cr.value.evaluate(env), dtype=np.float64)[sel]
            if cr.value
            else np.full(int(sel.sum()), np.nan)
        )
        dev = device_ids[sel].astype(np.int64)
        t = np.asarray(env["time"])[sel].astype(np.int64)
        names = rows.devices[sel]
        order = np.lexsort((t, dev))
        dev_o = dev[order]
        first = np.flatnonzero(np.concatenate([[True], dev_o[1:] != dev_o[:-1]]))
        counts = np.diff(np.append(first, dev_o.shape[0]))
        rank = np.arange(dev_o.shape[0]) - np.repeat(first, counts)
        st = self._state[cr.rule.name]
        slot_of_group = st.slots(dev_o[first])
        slot = np.repeat(slot_of_group, counts)
        out: list[AlertEvent] = []
        for k in range(int(counts.max())):
            at = order[rank == k]  # the k-th row of every device that has one
            s = slot[rank == k]
            tk, wk, ck = t[at], when[at], clear[at]
            state, since = st.state[s], st.since[s]
            # idle --when--> pending; pending --not when--> idle
            start = (state == IDLE) & wk
            state = np.where(start, PENDING, state)
            since = np.where(start, tk, since)
            state = np.where((state == PENDING) & ~wk, IDLE, state)
            raise_ = (state == PENDING) & wk & (tk - since >= cr.for_us)
            state = np.where(raise_, ACTIVE, state)
            # active --clear--> clearing; clearing --not clear--> active
            begin = (state == ACTIVE) & ~raise_ & ck
            state = np.where(begin, CLEARING, state)
            since = np.where(begin, tk, since)
            state = np.where((state == CLEARING) & ~ck, ACTIVE, state)
            done = (state == CLEARING) & ck & (tk - since >= cr.clear_for_us)
            state = np.where(done, IDLE, state)
            st.state[s], st.since[s] = state.astype(np.int8), since
            for kind, hit in (("raised", raise_), ("cleared", done)):
                for j in np.flatnonzero(hit).tolist():
                    row = at[j]
                    v = float(value[row])
                    out.append(
                        AlertEvent(
                            cr.rule.name,
                            int(dev[row]),
                            names[row].decode(errors="replace"),
                            kind,
                            int(t[row]),
                            None if np.isnan(v) else v,
                            cr.rule.severity.value,
                        )
                    )
        return out


def _columns(rows: TableRows) -> dict[str, npt.NDArray[Any]]:
    """The rows' columns for expressions: NULLs of numeric columns become NaN."""
    env: dict[str, npt.NDArray[Any]] = {}
    for name, col in rows.columns.items():
        null = rows.nulls.get(name)
        if null is not None and null.any() and col.dtype.kind in "iuf":
            with_nan = col.astype(np.float64)
            with_nan[null] = np.nan
            env[name] = with_nan
        else:
            env[name] = col
    return env
