"""Flap suppression of a parking space (parking/debounce.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from parking.debounce import Debounce, SpaceState, step

S = 1_000_000  # µs
RULE = Debounce(frames=2, hold_us=120 * S, flap_window_us=3600 * S)


def run(reports: list[tuple[int, bool]], rule: Debounce = RULE) -> SpaceState:
    state = None
    for t, occupied in reports:
        state = step(state, t * S, occupied, rule)
    assert state is not None
    return state


def test_the_first_report_sets_the_state_at_once() -> None:
    s = run([(100, True)])
    assert (s.occupied, s.changed_at_us, s.pending, s.changes) == (True, 100 * S, None, 0)


def test_a_car_parking_is_one_arrival_dated_from_its_first_report() -> None:
    # free; the car manoeuvres over the sensor: occupied, free, occupied, occupied
    s = run([(0, False), (10, True), (12, False), (15, True), (20, True)])
    assert (s.occupied, s.changed_at_us, s.changes, s.flaps) == (True, 15 * S, 1, 1)
    assert s.pending is None


def test_a_lone_report_is_pending_and_a_report_of_the_state_abandons_it_as_a_flap() -> None:
    s = run([(0, False), (10, True)])
    assert (s.occupied, s.pending, s.pending_since_us, s.pending_frames) == (False, True, 10 * S, 1)
    s = run([(0, False), (10, True), (11, False)])
    assert (s.occupied, s.pending, s.changes, s.flaps, s.flaps_in_window) == (False, None, 0, 1, 1)


def test_n_frames_or_the_holding_time_confirm_a_change() -> None:
    three = Debounce(frames=3, hold_us=120 * S, flap_window_us=3600 * S)
    assert not run([(0, False), (10, True), (20, True)], three).occupied
    assert run([(0, False), (10, True), (20, True), (30, True)], three).occupied
    # two reports, but the second one 120 s after the first: the change has held
    assert run([(0, False), (10, True), (130, True)], three).occupied


def test_reports_no_newer_than_the_latest_change_nothing() -> None:
    s = run([(0, False), (10, True), (20, True), (10, True), (20, True), (5, False)])
    assert (s.occupied, s.changes, s.last_frame_us, s.pending) == (True, 1, 20 * S, None)


def test_flaps_are_counted_per_window() -> None:
    flips = [(0, False)] + [(t, t % 20 == 10) for t in range(10, 200, 10)]
    s = run(flips)
    assert (s.flaps, s.flaps_in_window, s.flap_window_us) == (9, 9, 20 * S)
    s = run([*flips, (4000, False)])  # the 10th flap, over an hour after the window began
    assert (s.flaps, s.flaps_in_window, s.flap_window_us) == (10, 1, 4000 * S)


def test_a_change_whose_two_reports_arrive_in_the_other_order_is_confirmed() -> None:
    s = run([(0, False), (15, True), (10, True)])
    assert (s.occupied, s.changed_at_us, s.changes, s.pending) == (True, 10 * S, 1, None)
    # but an old report of the confirmed state changes nothing
    s = run([(0, False), (10, True), (15, True), (12, False)])
    assert (s.occupied, s.changes, s.flaps) == (True, 1, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.booleans()), max_size=40),
    st.integers(1, 5),
    st.booleans(),
)
def test_the_state_changes_only_after_the_rule_held(
    reports: list[tuple[int, bool]], frames: int, in_order: bool
) -> None:
    rule = Debounce(frames=frames, hold_us=120 * S, flap_window_us=3600 * S)
    if in_order:
        reports = sorted(dict(reports).items())  # one report per time, in time order
    state = None
    seen: list[tuple[int, bool]] = []
    for t, occ in reports:
        before = None if state is None else state.changes
        state = step(state, t * S, occ, rule)
        seen.append((t * S, occ))
        if before is not None and state.changes != before:
            # a confirmed change: enough reports of the new state from its start on, or one
            # that came after the holding time
            agree = [u for u, o in seen if o == state.occupied and u >= state.changed_at_us]
            latest = max(u for u, _ in seen)
            assert len(agree) >= frames or latest - state.changed_at_us >= rule.hold_us
            if in_order:  # and, reports in order, nothing against it since it began
                assert all(o == state.occupied for u, o in seen if u >= state.changed_at_us)
