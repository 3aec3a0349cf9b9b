"""The rules engine: every rule over each committed batch, and the clock-driven checks.

``evaluate`` takes a batch's committed rows per table (device ids resolved), sorts each
table by (device, time) once and gives every rule its selection (:mod:`alerts.runtimes`);
the condition machine does the rest for all subjects at once. Only frame times are used, so
replays give the same alerts. ``tick`` runs what needs a clock rather than a frame: offline
devices (absence) and ``clear_after``; the service ticks with the wall clock, ``cityflux rules
test`` in frame time as its input advances (:mod:`alerts.frameclock`, which asks
``next_due_us`` and ``horizon_us`` when the next check falls due).

State survives restarts in two parts: the alerts table is the truth for which alerts are
open (``reconcile``), and ``snapshot``/``restore`` keep everything else (pending since, last
values, tags' last gantries…) between checkpoints.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from alerts.attributes import DeviceAttributes
from alerts.batch import TableBatch
from alerts.frameloss import FrameLossRuntime
from alerts.machine import ACTIVE, CLEARING, IDLE, NEVER
from alerts.rules import (
    DEVICE_NUMBERS,
    DEVICE_TEXT,
    SOLAR,
    AbsenceRule,
    CompiledRule,
    FrameLossRule,
    RuleSet,
    install_keys,
)
from alerts.runtimes import AbsenceRuntime, AlertEvent, MachineRuntime, Services
from alerts.traffic import Sections, SectionTracker
from core.frames import TableRows

log = logging.getLogger(__name__)
Runtime = MachineRuntime | AbsenceRuntime | FrameLossRuntime
SECTION_KINDS = ("section_speed", "congestion")

__all__ = ["AlertEvent", "Engine"]


class Engine:
    """Evaluates a rule set on committed rows; returns the alert events they cause."""

    def __init__(self, ruleset: RuleSet, attributes: DeviceAttributes | None = None) -> None:
        self.ruleset = ruleset
        self.attributes = attributes or DeviceAttributes(install_keys(ruleset.rules))
        self.tracker = SectionTracker()
        self._sections: Sections | None = None
        self._batch: Mapping[str, TableBatch] = {}
        self.services = Services(self.attributes, ZoneInfo(ruleset.timezone), self._get_sections)
        self.runtimes: dict[str, Runtime] = {r.name: self._runtime(r) for r in ruleset.rules}
        self.clock_us = NEVER
        """The newest frame time seen (the clock of replays)."""

    def _runtime(self, rule: CompiledRule) -> Runtime:
        if isinstance(rule.rule, AbsenceRule):
            return AbsenceRuntime(rule, self.services)
        if isinstance(rule.rule, FrameLossRule):
            return FrameLossRuntime(rule, self.services)
        return MachineRuntime(rule, self.services)

    @property
    def rules(self) -> list[CompiledRule]:
        """The compiled rules."""
        return self.ruleset.rules

    def tables(self) -> set[str]:
        """Tables any rule reads (absence reads every table)."""
        out: set[str] = set()
        for r in self.rules:
            out.update(r.tables)
        return out

    def needs_attributes(self) -> bool:
        """Whether rules read registry attributes (fetched before evaluation)."""
        wanted = {*DEVICE_TEXT, *DEVICE_NUMBERS, *SOLAR}
        for r in self.rules:
            if r.kind in ("absence", "section_speed", "congestion"):
                return True
            used = r.names_used()
            if used & wanted or any(n.startswith("install_") for n in used):
                return True
        return False

    def active(self, rule: str) -> npt.NDArray[np.int64]:
        """Subject keys (device ids for device rules) with an open alert for ``rule``."""
        st = self.runtimes[rule].states
        n = st.index.size
        open_ = (st.state[:n] == ACTIVE) | (st.state[:n] == CLEARING)
        out: npt.NDArray[np.int64] = np.sort(st.key_of_slot[:n][open_])
        return out

    def _get_sections(self) -> Sections | None:
        return self._sections

    def evaluate(
        self,
        tables: Mapping[str, TableRows],
        received_us: Mapping[str, npt.NDArray[np.int64]] | None = None,
    ) -> list[AlertEvent]:
        """Run every rule over the committed rows (``device_id`` filled in); events in
        frame-time order. ``received_us`` (per table, per row) is when the frames arrived:
        absence rules then compare arrival with the wall clock of ``tick`` (a device whose
        own clock is wrong is still online); without it they use frame times (replays)."""
        batch = {
            name: TableBatch(rows, received_us.get(name) if received_us else None)
            for name, rows in tables.items()
            if len(rows)
        }
        if not batch:
            return []
        self._batch = batch
        self._sections = None
        reads = batch.get("vehicle_tag_reads")
        if reads is not None and any(r.kind in SECTION_KINDS for r in self.rules):
            self._sections = self.tracker.sections(
                reads.column("epc"), reads.device_id, reads.time, self.attributes
            )
        events: list[AlertEvent] = []
        for rt in self.runtimes.values():
            if isinstance(rt, AbsenceRuntime):
                events += rt.note(batch)
                continue
            if isinstance(rt, FrameLossRuntime):
                continue  # judged on the clock from the loss detector's counts (the stage)
            sel = rt.select(batch)
            if sel is not None and len(sel):
                events += rt.run(sel)
        newest = max(int(ctx.time.max()) for ctx in batch.values())
        self.clock_us = max(self.clock_us, newest)
        for rt in self.runtimes.values():
            if isinstance(rt, MachineRuntime):
                events += rt.auto_clear(self.clock_us)
        self._batch = {}
        self._sections = None
        return _ordered(events)

    def tick(self, now_us: int) -> list[AlertEvent]:
        """Clock-driven checks at ``now_us``: offline devices, ``clear_after``."""
        events: list[AlertEvent] = []
        for rt in self.runtimes.values():
            if isinstance(rt, AbsenceRuntime):
                events += rt.tick(now_us)
            elif isinstance(rt, MachineRuntime):
                events += rt.auto_clear(now_us)
        return _ordered(events)

    def next_due_us(self) -> int | None:
        """The earliest moment ``tick`` has something to do, given no further rows (None:
        nothing waits for the clock)."""
        dues = [d for rt in self.runtimes.values() if (d := rt.next_due_us()) is not None]
        return min(dues) if dues else None

    def horizon_us(self, device_ids: npt.NDArray[np.int64]) -> float:
        """How long after a row of these devices its clock-driven check can fall due at the
        earliest (the shortest ``clear_after`` or offline limit; inf when none applies):
        rows closer together than this can be evaluated as one batch without missing one."""
        out = math.inf
        for rt in self.runtimes.values():
            if isinstance(rt, AbsenceRuntime):
                out = min(out, rt.shortest_limit_us(device_ids))
            elif rt.rule.clear_after_us is not None:
                out = min(out, float(rt.rule.clear_after_us))
        return out

    def late_rows(self) -> dict[str, int]:
        """Rows ignored per rule because they were older than the subject's newest."""
        return {
            name: rt.late_rows
            for name, rt in self.runtimes.items()
            if isinstance(rt, MachineRuntime)
        }

    # -- hot reload ------------------------------------------------------------------------
    def replace(self, ruleset: RuleSet, now_us: int) -> list[AlertEvent]:
        """Swap in a new rule set: unchanged rules keep their state; a changed rule keeps its
        open alerts; a removed rule's open alerts are cleared (returned as events)."""
        old = self.runtimes
        self.ruleset = ruleset
        self.attributes.install_keys = tuple(
            sorted({*self.attributes.install_keys, *install_keys(ruleset.rules)})
        )
        self.services.timezone = ZoneInfo(ruleset.timezone)
        new: dict[str, Runtime] = {}
        for rule in ruleset.rules:
            prev = old.get(rule.name)
            if prev is not None and prev.rule.definition == rule.definition:
                prev.rule = rule
                new[rule.name] = prev
                continue
            rt = self._runtime(rule)
            if prev is not None and type(prev) is type(rt):
                _carry_open(prev, rt)
            new[rule.name] = rt
        events: list[AlertEvent] = []
        for name, rt in old.items():
            if name not in new:
                events += _close_all(rt, now_us, "rule removed")
        self.runtimes = new
        return _ordered(events)

    # -- persistence -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, bytes]:
        """Each rule's state (``npz`` bytes), keyed by rule name; ``~sections`` for tags."""
        out = {}
        for name, rt in self.runtimes.items():
            out[name] = _npz(rt.arrays())
        if self.tracker.index.size:
            keys, slots = self.tracker.index.items()
            out["~sections"] = _npz(
                {
                    "keys": keys,
                    "reader": self.tracker.reader[slots],
                    "time": self.tracker.time[slots],
                }
            )
        return out

    def restore(self, saved: Mapping[str, tuple[str, bytes]]) -> list[str]:
        """Load states saved by ``snapshot`` (name → (definition, npz)); a rule whose
        definition changed since starts fresh. Return the rules restored."""
        done = []
        for name, rt in self.runtimes.items():
            got = saved.get(name)
            if got is None or got[0] != rt.rule.definition:
                continue
            with np.load(io.BytesIO(got[1])) as data:
                rt.load_arrays({k: data[k] for k in data.files})
            done.append(name)
        sec = saved.get("~sections")
        if sec is not None:
            with np.load(io.BytesIO(sec[1])) as data:
                slots = self.tracker.index.slots_for(data["keys"])
                self.tracker._grow()
                self.tracker.reader[slots] = data["reader"]
                self.tracker.time[slots] = data["time"]
        return done

    def reconcile(self, rule: str, open_alerts: list[tuple[int, int, float | None, str]]) -> int:
        """Make the alerts table's open alerts of ``rule`` — (subject key, raised_at µs,
        raised value, subject) — the open ones in memory; others close (they were cleared
        after the last snapshot). A subject's newest event time becomes its watermark."""
        rt = self.runtimes.get(rule)
        if rt is None:
            return 0
        st = rt.states
        n = st.index.size
        was_open = np.flatnonzero((st.state[:n] == ACTIVE) | (st.state[:n] == CLEARING))
        st.state[was_open] = IDLE
        st.since[was_open] = NEVER
        st.active = 0
        if not open_alerts:
            return 0
        keys = np.array([a[0] for a in open_alerts], dtype=np.int64)
        slots = st.slots_for(keys)
        st.state[slots] = ACTIVE
        st.since[slots] = NEVER
        st.raised_at[slots] = [a[1] for a in open_alerts]
        st.raised_value[slots] = [np.nan if a[2] is None else a[2] for a in open_alerts]
        st.last[slots] = np.maximum(st.last[slots], st.raised_at[slots])
        st.last_true[slots] = np.maximum(st.last_true[slots], st.raised_at[slots])
        st.active = int(slots.shape[0])
        if isinstance(rt, MachineRuntime) and not rt.device_subjects:
            for a in open_alerts:
                rt.names[a[0]] = a[3].encode()
        return int(slots.shape[0])

    def watermark(
        self, rule: str, keys: npt.NDArray[np.int64], times: npt.NDArray[np.int64]
    ) -> None:
        """Rows of these subjects older than these times are late (events already stored)."""
        rt = self.runtimes.get(rule)
        if rt is None or keys.shape[0] == 0:
            return
        slots = rt.states.slots_for(np.unique(keys))
        order = np.argsort(keys, kind="stable")
        uniq, first = np.unique(keys[order], return_index=True)
        newest = np.maximum.reduceat(times[order], first)
        slots = rt.states.slots_for(uniq)
        rt.states.last[slots] = np.maximum(rt.states.last[slots], newest)


def _ordered(events: list[AlertEvent]) -> list[AlertEvent]:
    events.sort(key=lambda e: (e.at_us, e.rule, e.subject_key, e.state != "cleared"))
    return events


def _npz(arrays: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _carry_open(prev: Runtime, rt: Runtime) -> None:
    """A changed rule keeps its open alerts (one active alert per rule and subject)."""
    st = prev.states
    n = st.index.size
    open_ = np.flatnonzero((st.state[:n] == ACTIVE) | (st.state[:n] == CLEARING))
    if open_.shape[0] == 0:
        return
    keys = st.key_of_slot[open_]
    slots = rt.states.slots_for(keys)
    for name in ("raised_at", "raised_value", "last", "last_true"):
        getattr(rt.states, name)[slots] = getattr(st, name)[open_]
    rt.states.state[slots] = ACTIVE
    rt.states.active = int(slots.shape[0])
    if isinstance(prev, MachineRuntime) and isinstance(rt, MachineRuntime):
        rt.names.update({k: v for k, v in prev.names.items() if k in set(keys.tolist())})


def _close_all(rt: Runtime, now_us: int, reason: str) -> list[AlertEvent]:
    st = rt.states
    n = st.index.size
    open_ = np.flatnonzero((st.state[:n] == ACTIVE) | (st.state[:n] == CLEARING))
    device = not isinstance(rt, MachineRuntime) or rt.device_subjects
    out = []
    for s in open_.tolist():
        key = int(st.key_of_slot[s])
        rv = float(st.raised_value[s])
        name = None
        if isinstance(rt, MachineRuntime) and not device:
            name = rt.names.get(key, b"").decode(errors="replace")
        out.append(
            AlertEvent(
                rule=rt.rule.name,
                severity=rt.rule.rule.severity.value,
                state="cleared",
                at_us=now_us,
                subject=name,
                subject_key=key,
                device_id=key if device else None,
                value=None,
                raised_at_us=int(st.raised_at[s]),
                raised_value=None if np.isnan(rv) else rv,
                details={"reason": reason},
            )
        )
    st.state[open_] = IDLE
    st.active = 0
    return out
