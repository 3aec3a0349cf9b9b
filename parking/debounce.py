"""Flap suppression for one parking space: when a sensor's reports change the space's state.

A car parking is not three arrivals: a geomagnetic sensor's decision wobbles while a car
manoeuvres over it, and a passing truck can swing it for one sample. So a report of the other
state only makes that state *pending*; it becomes the space's state (a confirmed change)

- when ``frames`` consecutive reports agree on it (the first pending one included), or
- when a report agrees on it at least ``hold_us`` after the first pending one.

A report of the confirmed state while a change is pending abandons the pending change: that is
a suppressed flip (a *flap*), counted per ``flap_window_us`` for the flapping-sensor alert. A
confirmed change dates from its first pending report (when the car really arrived). The first
report of a space sets its state at once (there is nothing to suppress yet). Reports no newer
than the latest applied one (a redelivery, a batch committed after a later one) change
nothing — but for an earlier report of the pending state, which counts for it and moves its
start back (a change's two reports committed in the other order still confirm it) — so
applying a batch again is harmless.

Readers apply the time rule to the pending state as well (parking/store.py): a change pending
for ``hold_us`` with no report against it is taken as the state on reading, without waiting
for the sensor's next report. The state written here moves only with reports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Debounce:
    """The rule: consecutive reports, or holding time, that confirm a change."""

    frames: int = 2
    hold_us: int = 120_000_000
    flap_window_us: int = 3_600_000_000


@dataclass(slots=True)
class SpaceState:
    """A space's debounced state (one row of ``parking_spaces``), times in µs since the epoch."""

    occupied: bool
    changed_at_us: int
    last_frame_us: int
    pending: bool | None = None
    pending_since_us: int | None = None
    pending_frames: int = 0
    changes: int = 0
    flaps: int = 0
    flap_window_us: int | None = None
    flaps_in_window: int = 0


def step(state: SpaceState | None, t_us: int, occupied: bool, rule: Debounce) -> SpaceState:
    """The space's state after one report (``state`` is updated in place when given)."""
    if state is None:
        return SpaceState(occupied=occupied, changed_at_us=t_us, last_frame_us=t_us)
    if t_us <= state.last_frame_us:
        # out of order: an earlier report of the pending state (two batches committed in the
        # other order) still counts for it and moves its start back; anything else is old news
        since = state.pending_since_us
        if state.pending is occupied and since is not None and t_us < since:
            state.pending_since_us = t_us
            state.pending_frames += 1
            _confirm_if_held(state, state.last_frame_us, rule)
        return state
    state.last_frame_us = t_us
    if occupied == state.occupied:
        if state.pending is not None:
            _flap(state, t_us, rule)
            state.pending, state.pending_since_us, state.pending_frames = None, None, 0
        return state
    if state.pending is None or state.pending_since_us is None:
        state.pending, state.pending_since_us, state.pending_frames = occupied, t_us, 1
    else:
        state.pending_frames += 1
    _confirm_if_held(state, t_us, rule)
    return state


def _confirm_if_held(state: SpaceState, latest_us: int, rule: Debounce) -> None:
    since, pending = state.pending_since_us, state.pending
    if since is None or pending is None:
        return
    held = latest_us - since >= rule.hold_us and state.pending_frames > 1
    if state.pending_frames >= rule.frames or held:
        state.occupied, state.changed_at_us = pending, since
        state.pending, state.pending_since_us, state.pending_frames = None, None, 0
        state.changes += 1


def _flap(state: SpaceState, t_us: int, rule: Debounce) -> None:
    state.flaps += 1
    if state.flap_window_us is None or t_us - state.flap_window_us >= rule.flap_window_us:
        state.flap_window_us, state.flaps_in_window = t_us, 1
    else:
        state.flaps_in_window += 1
