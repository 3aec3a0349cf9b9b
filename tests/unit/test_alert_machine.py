"""The vectorised condition machine equals stepping every row one by one (the reference
below), whatever the rows, the batch boundaries and the durations."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.machine import ACTIVE, CLEARING, IDLE, NEVER, PENDING, SubjectStates, advance


class Reference:
    """One subject's machine, one row at a time (the definition)."""

    def __init__(self) -> None:
        self.state, self.since = IDLE, NEVER

    def step(self, t: int, when: bool, clear: bool, for_us: int, clear_for_us: int) -> str:
        out = ""
        if self.state == IDLE and when:
            self.state, self.since = PENDING, t
        if self.state == PENDING and not when:
            self.state, self.since = IDLE, NEVER
        if self.state == PENDING and t - self.since >= for_us:
            self.state, self.since = ACTIVE, NEVER
            return "raised"
        if self.state == ACTIVE and clear:
            self.state, self.since = CLEARING, t
        if self.state == CLEARING and not clear:
            self.state, self.since = ACTIVE, NEVER
        if self.state == CLEARING and t - self.since >= clear_for_us:
            self.state, self.since = IDLE, NEVER
            out = "cleared"
        return out


def _run(rows: list[tuple[int, int, bool, bool]], cuts: list[int], for_us: int, clear_for_us: int):  # type: ignore[no-untyped-def]
    st_ = SubjectStates()
    events = []
    bounds = sorted({0, len(rows), *(c % (len(rows) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        part = rows[lo:hi]
        if not part:
            continue
        part = sorted(part, key=lambda r: (r[0], r[1]))
        key = np.array([r[0] for r in part], dtype=np.int64)
        t = np.array([r[1] for r in part], dtype=np.int64)
        when = np.array([r[2] for r in part])
        clear = np.array([r[3] for r in part])
        uniq, first = np.unique(key, return_index=True)
        slots = st_.slots_for(uniq)
        b = np.append(first, len(part)).astype(np.int64)
        tr = advance(st_, slots, b, t, when, clear, t.astype(float), for_us, clear_for_us)
        keys_of_slot = dict(zip(slots.tolist(), uniq.tolist(), strict=True))
        for kind, rr, ss in (
            ("raised", tr.raised_rows, tr.raised_slots),
            ("cleared", tr.cleared_rows, tr.cleared_slots),
        ):
            for r, s in zip(rr.tolist(), ss.tolist(), strict=True):
                events.append((keys_of_slot[s], int(t[r]), kind))
    final = {}
    keys, slots = st_.keys()
    for k, s in zip(keys.tolist(), slots.tolist(), strict=True):
        final[k] = (int(st_.state[s]), int(st_.since[s]))
    return sorted(events), final


ROWS = st.lists(
    st.tuples(st.integers(0, 3), st.booleans(), st.booleans(), st.integers(1, 3)), max_size=60
)


@settings(max_examples=400, deadline=None)
@given(
    raw=ROWS,
    cuts=st.lists(st.integers(0, 60), max_size=4),
    for_us=st.sampled_from([0, 1, 2, 5]),
    clear_for_us=st.sampled_from([0, 1, 3]),
)
def test_machine_equals_row_by_row_stepping(raw, cuts, for_us, clear_for_us) -> None:  # type: ignore[no-untyped-def]
    # strictly increasing times per subject; batches are cut in time order
    clock: dict[int, int] = {}
    rows = []
    for key, when, clear, gap in raw:
        clock[key] = clock.get(key, 0) + gap
        rows.append((key, clock[key], when, clear))
    rows.sort(key=lambda r: r[1])
    got_events, got_final = _run(rows, cuts, for_us, clear_for_us)
    refs: dict[int, Reference] = {}
    want = []
    for key, t, when, clear in rows:
        ref = refs.setdefault(key, Reference())
        ev = ref.step(t, when, clear, for_us, clear_for_us)
        if ev:
            want.append((key, t, ev))
    assert got_events == sorted(want)
    assert got_final == {k: (r.state, r.since) for k, r in refs.items()}


def test_a_long_series_needs_few_passes() -> None:
    st_ = SubjectStates()
    n_dev, per = 1000, 10
    np.repeat(np.arange(n_dev, dtype=np.int64), per)
    t = np.tile(np.arange(per, dtype=np.int64), n_dev)
    when = t >= 3
    slots = st_.slots_for(np.arange(n_dev, dtype=np.int64))
    bounds = np.arange(0, n_dev * per + 1, per, dtype=np.int64)
    tr = advance(st_, slots, bounds, t, when, ~when, t.astype(float), 2, 0)
    assert tr.raised_rows.shape[0] == n_dev  # each device raises once, at t = 5
    assert set(t[tr.raised_rows].tolist()) == {5}
    assert st_.active == n_dev


def test_a_clear_run_carries_over_a_batch_boundary() -> None:
    rows = [(7, 1, True, False), (7, 2, False, True), (7, 4, False, True), (7, 5, False, True)]
    assert _run(rows, [2], 0, 3)[0] == [(7, 1, "raised"), (7, 5, "cleared")]
    # and a pending run carries over too: raised at 5 = 1 + 4, not 4 after the cut
    rows = [(7, 1, True, False), (7, 3, True, False), (7, 4, True, False), (7, 5, True, False)]
    assert _run(rows, [2], 4, 0)[0] == [(7, 5, "raised")]
