"""The condition state machine of every rule, run for all subjects of a batch at once.

Per subject (a device, a vehicle tag, a road section) and rule::

    IDLE ──when──▶ PENDING ──when held ≥ for──▶ ACTIVE (raised) ──clear──▶ CLEARING
      ▲              │ not when                    ▲                          │
      └──────────────┘                             └──────── not clear ───────┤
      ◀───── clear held ≥ clear_for, or clear_after since `when` last held (cleared) ─┘

Rows arrive sorted by (subject, time). Instead of stepping row by row, each subject looks
for its next transition with whole-array operations: the start of the run of consecutive
``when`` (or ``clear``) rows each row belongs to is known for all rows at once, so "the
first row where ``when`` has held for ``for``" is one mask and one ``minimum.reduceat``. A
subject that raises then looks for its clear from the next row, and so on: a batch costs
one pass per transition a subject makes in it (usually one or two), never a Python loop over
rows. Only the frames' own times are used, so replays give the same alerts.

State lives in :class:`SubjectStates`: parallel arrays addressed by slot, and a sorted index
from 64-bit subject keys to slots (plus a small sorted delta for new subjects, merged when it
grows), so 10 million subjects cost ~60 bytes each and no Python object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

IDLE, PENDING, ACTIVE, CLEARING = 0, 1, 2, 3
NEVER = np.iinfo(np.int64).min  # "no time" in int64 time arrays

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]


class SlotIndex:
    """Sorted 64-bit keys → slots, with a sorted delta for keys added since the last merge."""

    __slots__ = ("_dkeys", "_dslots", "_keys", "_slots", "size")

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.int64)
        self._slots = np.empty(0, dtype=np.int64)
        self._dkeys = np.empty(0, dtype=np.int64)
        self._dslots = np.empty(0, dtype=np.int64)
        self.size = 0

    @staticmethod
    def _search(keys: I64, slots: I64, wanted: I64) -> I64:
        out = np.full(wanted.shape[0], -1, dtype=np.int64)
        if keys.shape[0] == 0:
            return out
        at = np.minimum(np.searchsorted(keys, wanted), keys.shape[0] - 1)
        hit = keys[at] == wanted
        out[hit] = slots[at[hit]]
        return out

    def find(self, wanted: I64) -> I64:
        """Slot of each key, or -1."""
        out = self._search(self._dkeys, self._dslots, wanted)
        miss = out < 0
        if miss.any():
            out[miss] = self._search(self._keys, self._slots, wanted[miss])
        return out

    def add(self, new: I64) -> I64:
        """Give new slots to keys not present (``new`` must be unique and absent)."""
        slots = np.arange(self.size, self.size + new.shape[0], dtype=np.int64)
        self.size += new.shape[0]
        keys = np.concatenate([self._dkeys, new])
        vals = np.concatenate([self._dslots, slots])
        order = np.argsort(keys, kind="stable")
        self._dkeys, self._dslots = keys[order], vals[order]
        if self._dkeys.shape[0] > max(4096, self._keys.shape[0] // 16):
            keys = np.concatenate([self._keys, self._dkeys])
            vals = np.concatenate([self._slots, self._dslots])
            order = np.argsort(keys, kind="stable")
            self._keys, self._slots = keys[order], vals[order]
            self._dkeys = np.empty(0, dtype=np.int64)
            self._dslots = np.empty(0, dtype=np.int64)
        return slots

    def slots_for(self, keys: I64) -> I64:
        """Slot of each (unique) key, adding the keys not present yet."""
        slots = self.find(keys)
        miss = slots < 0
        if miss.any():
            slots[miss] = self.add(keys[miss])
        return slots

    def items(self) -> tuple[I64, I64]:
        """Every (key, slot), keys sorted."""
        keys = np.concatenate([self._keys, self._dkeys])
        vals = np.concatenate([self._slots, self._dslots])
        order = np.argsort(keys, kind="stable")
        return keys[order], vals[order]


class SubjectStates:
    """Per-subject state of one rule, in arrays that grow by doubling."""

    FIELDS: tuple[tuple[str, type, int | float], ...] = (
        ("state", np.int8, IDLE),
        ("since", np.int64, NEVER),  # when PENDING/CLEARING began
        ("last", np.int64, NEVER),  # newest row time applied (older rows are late)
        ("last_true", np.int64, NEVER),  # newest row where `when` held
        ("raised_at", np.int64, NEVER),
        ("raised_value", np.float64, np.nan),
    )

    def __init__(self) -> None:
        self.index = SlotIndex()
        self._cap = 0
        self.key_of_slot = np.empty(0, dtype=np.int64)
        self.state = np.empty(0, dtype=np.int8)
        self.since = np.empty(0, dtype=np.int64)
        self.last = np.empty(0, dtype=np.int64)
        self.last_true = np.empty(0, dtype=np.int64)
        self.raised_at = np.empty(0, dtype=np.int64)
        self.raised_value = np.empty(0, dtype=np.float64)
        self.active = 0
        """Subjects ACTIVE or CLEARING (an alert is open)."""

    def __len__(self) -> int:
        return self.index.size

    def slots_for(self, keys: I64) -> I64:
        """Slots of these (unique) subject keys, new subjects starting IDLE."""
        slots = self.index.find(keys)
        miss = slots < 0
        if miss.any():
            slots[miss] = self.index.add(keys[miss])
            if self.index.size > self._cap:
                self._grow(self.index.size)
            self.key_of_slot[slots[miss]] = keys[miss]
        return slots

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self._cap, 1024)
        for name, dtype, fill in (*self.FIELDS, ("key_of_slot", np.int64, 0)):
            old = getattr(self, name)
            new: npt.NDArray[Any] = np.full(cap, fill, dtype=dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self._cap = cap

    def keys(self) -> tuple[I64, I64]:
        """Every subject key and its slot (in slot order)."""
        n = self.index.size
        return self.key_of_slot[:n].copy(), np.arange(n, dtype=np.int64)

    def dump(self) -> tuple[dict[str, npt.NDArray[Any]], I64]:
        """Every subject's key (``keys``) and fields as arrays, to resume from; and the slots."""
        keys, slots = self.keys()
        out: dict[str, npt.NDArray[Any]] = {"keys": keys}
        for name, _, _ in self.FIELDS:
            out[name] = getattr(self, name)[slots]
        return out, slots

    @classmethod
    def restored(cls, data: Mapping[str, npt.NDArray[Any]]) -> tuple[SubjectStates, I64]:
        """States rebuilt from ``dump()``'s arrays; and the subjects' slots."""
        st = cls()
        slots = st.slots_for(np.asarray(data["keys"], dtype=np.int64))
        for name, _, _ in cls.FIELDS:
            getattr(st, name)[slots] = data[name]
        return st, slots

    def open_slots(self) -> I64:
        """Slots with an open alert."""
        n = self.index.size
        found: I64 = np.flatnonzero((self.state[:n] == ACTIVE) | (self.state[:n] == CLEARING))
        return found


@dataclass(slots=True)
class Transitions:
    """Raises and clears found in a batch: row positions (into the rule's sorted rows) and
    the slots of their subjects, in no particular order."""

    raised_rows: I64
    raised_slots: I64
    cleared_rows: I64
    cleared_slots: I64


def run_starts(cond: Bool, group_of: I64) -> I64:
    """For every row, the index of the first row of the run of consecutive true ``cond``
    rows (within its group) that contains it; rows where ``cond`` is false get their own
    index."""
    n = cond.shape[0]
    idx = np.arange(n, dtype=np.int64)
    if n == 0:
        return idx
    new_run = np.ones(n, dtype=np.bool_)
    new_run[1:] = ~cond[:-1] | (group_of[1:] != group_of[:-1])
    starts = np.where(new_run | ~cond, idx, 0)
    out: I64 = np.maximum.accumulate(starts)
    return out


def advance(
    st: SubjectStates,
    slots: I64,
    bounds: I64,
    t: I64,
    when: Bool,
    clear: Bool,
    value: F64,
    for_us: int,
    clear_for_us: int,
) -> Transitions:
    """Run the machine over sorted rows: group ``g`` (subject ``slots[g]``) owns rows
    ``bounds[g]:bounds[g+1]``, in time order. Updates ``st`` and returns the transitions.

    Most subjects of a batch are idle and stay idle (``when`` never holds): they only get
    their newest time; the machine runs on the others' rows alone."""
    empty = np.empty(0, dtype=np.int64)
    if t.shape[0] == 0:
        return Transitions(empty, empty, empty, empty)
    first_row = bounds[:-1]
    st.last[slots] = np.maximum(st.last[slots], t[bounds[1:] - 1])
    busy = (st.state[slots] != IDLE) | np.logical_or.reduceat(when, first_row)
    if busy.all():
        return _advance(st, slots, bounds, t, when, clear, value, for_us, clear_for_us)
    if not busy.any():
        return Transitions(empty, empty, empty, empty)
    rows = np.repeat(busy, np.diff(bounds))
    counts = np.diff(bounds)[busy]
    sub_bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = np.flatnonzero(rows)
    tr = _advance(
        st, slots[busy], sub_bounds, t[idx], when[idx], clear[idx], value[idx], for_us,
        clear_for_us,
    )  # fmt: skip
    return Transitions(idx[tr.raised_rows], tr.raised_slots, idx[tr.cleared_rows], tr.cleared_slots)


def _advance(
    st: SubjectStates,
    slots: I64,
    bounds: I64,
    t: I64,
    when: Bool,
    clear: Bool,
    value: F64,
    for_us: int,
    clear_for_us: int,
) -> Transitions:
    n_groups = slots.shape[0]
    n = t.shape[0]
    empty = np.empty(0, dtype=np.int64)
    counts = np.diff(bounds)
    group_of = np.repeat(np.arange(n_groups, dtype=np.int64), counts)
    first_row = bounds[:-1]
    end_row = bounds[1:]
    when_run = run_starts(when, group_of)
    clear_run = run_starts(clear, group_of)
    state0 = st.state[slots]
    since0 = st.since[slots]
    # where each group looks from, what for, and the start time a run continuing from the
    # previous batch inherits (PENDING/CLEARING since)
    ptr = first_row.copy()
    seeking_clear = (state0 == ACTIVE) | (state0 == CLEARING)
    inherit = np.where(
        ((state0 == PENDING) & when[first_row]) | ((state0 == CLEARING) & clear[first_row]),
        since0,
        NEVER,
    )
    idx = np.arange(n, dtype=np.int64)
    big = np.int64(n)
    raised_r: list[I64] = []
    raised_g: list[I64] = []
    cleared_r: list[I64] = []
    cleared_g: list[I64] = []
    live = ptr < end_row
    while live.any():
        p = ptr[group_of]
        seek_c = seeking_clear[group_of]
        cond = np.where(seek_c, clear, when)
        run = np.where(seek_c, clear_run, when_run)
        eff = np.minimum(np.maximum(run, p), idx)  # rows before p are masked out below
        inh = inherit[group_of]
        start = np.where((eff == p) & (inh != NEVER), inh, t[eff])
        need = np.where(seek_c, clear_for_us, for_us)
        ok = cond & (idx >= p) & (t - start >= need) & live[group_of]
        hit_at = np.minimum.reduceat(np.where(ok, idx, big), first_row)
        found = hit_at < big
        if not found.any():
            break
        g = np.flatnonzero(found)
        r = hit_at[g]
        up = ~seeking_clear[g]
        raised_r.append(r[up])
        raised_g.append(g[up])
        cleared_r.append(r[~up])
        cleared_g.append(g[~up])
        ptr[g] = r + 1
        seeking_clear[g] = up
        inherit[g] = NEVER
        live = found & (ptr < end_row)
    # the state each group ends in, from its last row
    last = end_row - 1
    p_last = ptr
    has_rows = p_last <= last
    w_last, c_last = when[last], clear[last]
    eff_w = np.minimum(np.maximum(when_run[last], p_last), last)
    eff_c = np.minimum(np.maximum(clear_run[last], p_last), last)
    start_w = np.where((eff_w == first_row) & (inherit != NEVER), inherit, t[eff_w])
    start_c = np.where((eff_c == first_row) & (inherit != NEVER), inherit, t[eff_c])
    state = np.where(
        seeking_clear,
        np.where(has_rows & c_last, CLEARING, ACTIVE),
        np.where(has_rows & w_last, PENDING, IDLE),
    ).astype(np.int8)
    since = np.where(state == PENDING, start_w, np.where(state == CLEARING, start_c, NEVER)).astype(
        np.int64
    )
    rr = np.concatenate(raised_r) if raised_r else empty
    rg = np.concatenate(raised_g) if raised_g else empty
    cr = np.concatenate(cleared_r) if cleared_r else empty
    cg = np.concatenate(cleared_g) if cleared_g else empty
    was_open = (state0 == ACTIVE) | (state0 == CLEARING)
    now_open = (state == ACTIVE) | (state == CLEARING)
    st.active += int(now_open.sum()) - int(was_open.sum())
    st.state[slots] = state
    st.since[slots] = since
    true_at = np.maximum.reduceat(np.where(when, t, NEVER), first_row)
    st.last_true[slots] = np.maximum(st.last_true[slots], true_at)
    if rr.shape[0]:
        # a subject may raise, clear and raise again in one batch: keep its last raise
        order = np.argsort(rr, kind="stable")
        st.raised_at[slots[rg[order]]] = t[rr[order]]
        st.raised_value[slots[rg[order]]] = value[rr[order]]
    return Transitions(rr, slots[rg], cr, slots[cg])
