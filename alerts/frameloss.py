"""The ``frame_loss`` kind: devices losing more than a share of their numbered frames.

The loss detector (device_registry/frameloss.py) keeps hourly counts per device
(``device_frame_counts``: numbered frames received, and missing net of late arrivals). On
the alerts clock, at most every ``check_every``, the stage reads each device's sums over the
rule's window (one grouped query) and hands them to ``judge``: ratio = missing / (received
+ missing); raised above ``above`` once ``min_frames`` were counted, cleared at or below
``clear_below`` or when nothing was counted in the window. Subjects are devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from alerts.machine import ACTIVE, IDLE, SubjectStates
from alerts.rules import CompiledRule, FrameLossRule
from alerts.runtimes import AlertEvent, Services

I64 = npt.NDArray[np.int64]
Array = npt.NDArray[Any]

_COUNTS_SQL = (
    "SELECT c.device_id, sum(c.received)::int8, sum(c.missing)::int8 "
    "FROM device_frame_counts c {join}"
    "WHERE c.hour >= date_trunc('hour', now()) - make_interval(hours => %s) GROUP BY 1"
)


@dataclass
class FrameLossRuntime:
    """Open frame-loss alerts per device, judged from window sums."""

    rule: CompiledRule
    services: Services
    states: SubjectStates = field(default_factory=SubjectStates)
    next_check_us: int = 0

    @property
    def spec(self) -> FrameLossRule:
        """The rule's definition."""
        r = self.rule.rule
        assert isinstance(r, FrameLossRule)
        return r

    def due(self, now_us: int) -> bool:
        """Whether a check is due at ``now_us`` (and count it as done)."""
        if now_us < self.next_check_us:
            return False
        self.next_check_us = now_us + int(self.spec.check_every_s * 1e6)
        return True

    async def counts(self, conn: psycopg.AsyncConnection[Any]) -> tuple[I64, I64, I64]:
        """(device ids, received, missing) summed over the window, for the watched devices."""
        r = self.spec
        params: list[Any] = []
        join = ""
        if r.profiles:
            join = "JOIN devices d ON d.id = c.device_id AND d.profile = ANY(%s) "
            params.append(list(r.profiles))
        params.append(r.hours - 1)
        cur = await conn.execute(_COUNTS_SQL.format(join=join), params)
        rows = await cur.fetchall()
        if not rows:
            e = np.empty(0, dtype=np.int64)
            return e, e, e
        arr = np.array(rows, dtype=np.int64)
        return arr[:, 0], arr[:, 1], arr[:, 2]

    def judge(self, ids: I64, received: I64, missing: I64, now_us: int) -> list[AlertEvent]:
        """Raise and clear from the window's sums at ``now_us``."""
        r = self.spec
        st = self.states
        missing = np.maximum(missing, 0)
        total = received + missing
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(total > 0, missing / np.maximum(total, 1), 0.0)
        out: list[AlertEvent] = []
        slots = st.slots_for(ids) if ids.shape[0] else np.empty(0, dtype=np.int64)
        idle = st.state[slots] == IDLE
        raise_ = idle & (total >= r.min_frames) & (ratio > r.above)
        for j in np.flatnonzero(raise_).tolist():
            out.append(self._event("raised", int(ids[j]), now_us, float(ratio[j]), now_us, {
                "received": int(received[j]), "missing": int(missing[j]),
                "window_h": r.hours,
            }))  # fmt: skip
        hit = slots[raise_]
        st.state[hit] = ACTIVE
        st.raised_at[hit] = now_us
        st.raised_value[hit] = ratio[raise_]
        st.active += int(hit.shape[0])
        # open alerts: cleared when the ratio fell, or when the window counted nothing
        n = st.index.size
        open_slots = np.flatnonzero(st.state[:n] == ACTIVE)
        if open_slots.shape[0]:
            keys = st.key_of_slot[:n][open_slots]
            where = {int(k): j for j, k in enumerate(ids.tolist())}
            for s, key in zip(open_slots.tolist(), keys.tolist(), strict=True):
                at = where.get(int(key))
                if at is not None and not ratio[at] <= r.clear_at:
                    continue
                value = None if at is None else float(ratio[at])
                why = "nothing counted in the window" if at is None else "loss ratio fell"
                rv = float(st.raised_value[s])
                out.append(
                    self._event(
                        "cleared",
                        int(key),
                        now_us,
                        value,
                        int(st.raised_at[s]),
                        {"reason": why},
                        raised_value=None if np.isnan(rv) else rv,
                    )
                )
                st.state[s] = IDLE
                st.active -= 1
        return out

    def _event(
        self,
        state: str,
        device: int,
        at_us: int,
        value: float | None,
        raised_at_us: int,
        details: dict[str, Any],
        raised_value: float | None = None,
    ) -> AlertEvent:
        return AlertEvent(
            rule=self.rule.name,
            severity=self.spec.severity.value,
            state=state,
            at_us=at_us,
            subject=None,
            subject_key=device,
            device_id=device,
            value=value,
            raised_at_us=raised_at_us,
            raised_value=value if state == "raised" else raised_value,
            details=details,
        )

    def next_due_us(self) -> int | None:
        """Nothing waits for the frames' clock (the checks follow the wall clock)."""
        return None

    def arrays(self) -> dict[str, Array]:
        """Everything needed to resume."""
        return self.states.dump()[0]

    def load_arrays(self, data: Mapping[str, Array]) -> None:
        """Resume from ``arrays()``."""
        st = self.states = SubjectStates.restored(data)[0]
        st.active = int((st.state == ACTIVE).sum())
