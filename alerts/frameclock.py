"""The rules engine over recorded rows, with a clock that is the frames' own time.

The service ticks the engine with the wall clock; a replay of recorded frames
(``cityflux rules test``) has no wall clock to speak of, so its clock is the frames' time:
before a row is evaluated, every clock-driven check (an offline device, ``clear_after``)
that fell due before that row's time runs at the moment it fell due. Rows are evaluated in
time slices no longer than the engine's horizon (the shortest ``clear_after`` or offline
limit), so no check can fall due inside a slice unnoticed. The events are then the same
however the input is cut into batches, and each carries the frame time it happened at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from alerts.engine import AlertEvent, Engine
from alerts.machine import NEVER
from core.frames import TableRows


class FrameClock:
    """Feeds rows (``device_id`` filled in) to an engine in frame time, ticking it as the
    frames' time passes each moment a check falls due."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def advance(self, tables: Mapping[str, TableRows]) -> list[AlertEvent]:
        """Evaluate these rows and the checks that fall due among them; events in time order
        (rows older than what was already evaluated are late, as in the service)."""
        engine = self.engine
        rest = {name: rows for name, rows in tables.items() if len(rows)}
        if not rest:
            return []
        ids = np.unique(
            np.concatenate([np.asarray(r.columns["device_id"], np.int64) for r in rest.values()])
        )
        horizon = max(engine.horizon_us(ids), 1.0)
        events: list[AlertEvent] = []
        while rest:
            times = {name: np.asarray(r.columns["time"], np.int64) for name, r in rest.items()}
            first = min(int(t.min()) for t in times.values())
            due = engine.next_due_us()
            if due is not None and due < first:
                events += engine.tick(due)  # the clock passes it before the next row
                continue
            # rows at a check's exact moment come first: a report on the limit is on time
            end = first + horizon if math.isfinite(horizon) else math.inf
            if due is not None:
                end = min(end, due + 1)
            head: dict[str, TableRows] = {}
            tail: dict[str, TableRows] = {}
            for name, rows in rest.items():
                early = times[name] < end
                if early.all():
                    head[name] = rows
                elif early.any():
                    head[name], tail[name] = rows.take(early), rows.take(~early)
                else:
                    tail[name] = rows
            events += engine.evaluate(head)
            rest = tail
        return events

    def finish(self) -> list[AlertEvent]:
        """The checks due by the newest frame time (the end of the input)."""
        if self.engine.clock_us == NEVER:
            return []
        return self.engine.tick(self.engine.clock_us)
