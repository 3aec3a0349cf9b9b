"""Gaps in the numbers devices give their frames, found for a whole batch at once (numpy).

State per (device, stream): the highest number seen, *extended* past wrap-arounds (a u16
counter that wraps keeps counting up, as RTP's extended sequence number does, RFC 3550
appendix A.1) and a 64-bit window saying which of the 64 numbers below the highest arrived
(the sliding window of IPsec's anti-replay check, RFC 4303 §3.4.3). For each batch, per
device, in arrival order (docs/design/0011-frame-loss.md):

- a number above the highest: the numbers skipped are **missing** (a gap, counted at once);
- the highest itself, or one the window says arrived: a **duplicate** (nothing counted);
- one within the window that had not arrived: a **late** frame that fills a gap — it is
  **recovered**: the device's missing count goes down by one (never below what was counted);
- a jump backwards of more than the window from the frame before it, or forwards by more
  than ``max_gap`` (4096), *followed by a frame 1..window after it* (RFC 3550 A.1's
  probation; a jump that is a device's last frame of a batch waits for its next batch): the
  counter **restarted** (a reboot, or a clock set anew): the
  device starts afresh from that number, nothing is counted missing for the jump (frames
  lost just before or just after a reboot cannot be told from the restart itself, and a
  u16 counter restarting at 0 from 40,000 is a jump of +25,536, not that many losses);
- one further back than the window without such a jump, or a jump nothing confirms (a lone
  stale frame: a broker's resend, a frame held back for long): too late to tell a duplicate
  from a recovered frame — ignored (it stays counted missing).

A counter's difference to the frame before it is taken modulo its size into
[-size/2, size/2). Slot streams
(HJ 212's minutes and hours, ``modulus`` 0) never wrap. A device's first frame ever (no
state) starts it: frames lost before it cannot be seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import numpy.typing as npt

WINDOW = 64
"""Numbers below the highest whose arrival is remembered (bits of the window)."""
MAX_GAP = 4096
"""A longer jump forward is a restart, not a loss."""
_ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_STREAM_BITS = 8  # a state key is device_id << 8 | stream code

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


@dataclass(slots=True)
class Gaps:
    """What one batch of one stream revealed."""

    stream: str
    modulus: int
    device_ids: I32 = field(default_factory=lambda: np.empty(0, np.int32))
    """One entry per gap: the device, its first and last missing numbers (as the device
    numbers them: wrapped for counters), how many are missing."""
    first: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    last: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    missing: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    filled_ids: I32 = field(default_factory=lambda: np.empty(0, np.int32))
    """One entry per late frame that filled a gap: the device and the number (wrapped)."""
    filled: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    counted_ids: I32 = field(default_factory=lambda: np.empty(0, np.int32))
    """Per device of the batch: frames received (not duplicates), missing found, recovered."""
    received: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    missing_by_device: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    recovered_by_device: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    restarts: int = 0
    """Counters seen restarting (reboots) in the batch."""

    @property
    def total_missing(self) -> int:
        """Numbers found missing in this batch."""
        return int(self.missing.sum())


class GapDetector:
    """Per-device state of every numbered stream, updated a batch at a time."""

    def __init__(self, window: int = WINDOW, max_gap: int = MAX_GAP) -> None:
        if not 1 <= window <= WINDOW:
            raise ValueError(f"window must be 1..{WINDOW}")
        self.window, self.max_gap = window, max_gap
        self._streams: dict[str, int] = {}
        self._slot: dict[int, int] = {}
        self._high = np.zeros(1024, dtype=np.int64)
        self._seen = np.zeros(1024, dtype=np.uint64)
        self._keys = np.zeros(1024, dtype=np.int64)  # slot -> key
        self._dirty = np.zeros(1024, dtype=np.bool_)  # by slot: changed since state()
        self._cand: dict[int, int] = {}
        """A device's jump waiting for its next frame to confirm it (see ``_probation``)."""

    def __len__(self) -> int:
        return len(self._slot)

    def _code(self, stream: str) -> int:
        code = self._streams.get(stream)
        if code is None:
            if len(self._streams) >= 1 << _STREAM_BITS:
                raise ValueError("too many numbered streams")
            code = self._streams[stream] = len(self._streams)
        return code

    def _lookup(self, keys: list[int]) -> npt.NDArray[np.int64]:
        """Slots of these keys, -1 for a key without one (one C-level pass over the dict)."""
        return np.fromiter(
            map(self._slot.get, keys, repeat(-1, len(keys))), dtype=np.int64, count=len(keys)
        )

    def _slots_for(
        self, keys: list[int], found: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.int64]:
        """Slots of these keys, new ones appended (their state is set by the caller);
        ``found``: their ``_lookup``, when the caller has it already."""
        out = self._lookup(keys) if found is None else found.copy()
        for j in np.flatnonzero(out < 0).tolist():
            key = keys[j]
            slot = self._slot.get(key)  # a key twice in ``keys`` has its slot by now
            if slot is None:
                slot = self._slot[key] = len(self._slot)
                if slot >= self._high.shape[0]:
                    self._grow()
                self._keys[slot] = key
            out[j] = slot
        return out

    def _grow(self) -> None:
        size = 2 * self._high.shape[0]
        self._high = np.resize(self._high, size)
        self._seen = np.resize(self._seen, size)
        self._keys = np.resize(self._keys, size)
        dirty = np.zeros(size, dtype=np.bool_)
        dirty[: self._dirty.shape[0]] = self._dirty
        self._dirty = dirty

    def seed(self, stream: str, device_ids: I32, highs: I64, seen: U64) -> None:
        """Take the saved state of these devices (at start, from ``device_frame_state``)."""
        code = self._code(stream)
        keys = ((device_ids.astype(np.int64) << _STREAM_BITS) | code).tolist()
        slots = self._slots_for(keys)
        self._high[slots] = highs
        self._seen[slots] = seen

    def changed(self, stream: str, device_ids: I32) -> None:
        """Mark these devices' state changed again (saving it failed)."""
        code = self._code(stream)
        keys = ((device_ids.astype(np.int64) << _STREAM_BITS) | code).tolist()
        self._dirty[self._slots_for(keys)] = True

    def state(self) -> list[tuple[str, I32, I64, U64]]:
        """(stream, devices, highest, window) of the devices changed since the last call."""
        slots = np.flatnonzero(self._dirty)
        if not slots.shape[0]:
            return []
        self._dirty[slots] = False
        names = {c: s for s, c in self._streams.items()}
        keys = self._keys[slots]
        codes = keys & ((1 << _STREAM_BITS) - 1)
        out = []
        for code in np.unique(codes).tolist():
            pick = codes == code
            out.append(
                (
                    names[code],
                    (keys[pick] >> _STREAM_BITS).astype(np.int32),
                    self._high[slots[pick]].copy(),
                    self._seen[slots[pick]].copy(),
                )
            )
        return out

    def _waiting(self, k: I64) -> list[int]:
        """The keys of a batch (``k`` sorted) that have a jump waiting in ``_cand``; from the
        smaller side, as waiting jumps may be few or many."""
        n = k.shape[0]
        if not n:
            return []
        if len(self._cand) < n:
            cand = np.fromiter(self._cand, dtype=np.int64, count=len(self._cand))
            at = np.minimum(np.searchsorted(k, cand), n - 1)
            waiting: list[int] = cand[k[at] == cand].tolist()
            return waiting
        heads = k[np.concatenate([[True], k[1:] != k[:-1]])]
        return [key for key in heads.tolist() if key in self._cand]

    def _probation(self, k: I64, x: I64, modulus: int) -> tuple[I64, I64]:
        """Frames (sorted by key, arrival order kept) without the jumps nothing confirms.

        A jump (back past the window, or forward past ``max_gap``) is taken as a restart only
        when the device's next frame follows it by 1..window, as RFC 3550 A.1 waits for a
        second packet in sequence: a lone stray frame (a stale copy the broker sent again, a
        frame held back for long) is dropped instead of restarting the counter and counting
        everything between it and the highest missing. A jump that is a device's last frame
        of the batch waits for its next batch (``_cand``), where it goes first."""
        w = self.window
        if self._cand:
            extra = [(key, self._cand.pop(key)) for key in self._waiting(k)]
            if extra:
                k = np.concatenate([np.array([a for a, _ in extra], dtype=np.int64), k])
                x = np.concatenate([np.array([b for _, b in extra], dtype=np.int64), x])
                again = np.argsort(k, kind="stable")  # the waiting jump first per device
                k, x = k[again], x[again]
        keep = np.ones(k.shape[0], dtype=np.bool_)
        while True:
            idx = np.flatnonzero(keep)
            kk, xx = k[idx], x[idx]
            if not kk.shape[0]:
                break
            first = np.concatenate([[True], kk[1:] != kk[:-1]])
            prev = np.empty(kk.shape[0], dtype=np.int64)
            prev[1:] = xx[:-1]
            slots = self._lookup(kk[first].tolist())
            known = slots >= 0
            high = np.where(known, self._high[np.maximum(slots, 0)], 0)
            base = high % modulus if modulus else high
            prev[first] = np.where(known, base, xx[first])
            d = xx - prev
            if modulus:
                d = (d + modulus // 2) % modulus - modulus // 2
            jump = (d < -w) | (d > self.max_gap)
            same_next = np.zeros(kk.shape[0], dtype=np.bool_)
            same_next[:-1] = ~first[1:]
            dn = np.zeros(kk.shape[0], dtype=np.int64)
            dn[:-1] = d[1:]
            bad = jump & ~(same_next & (dn >= 1) & (dn <= w))
            if not bad.any():
                break
            for key, num in zip(
                kk[bad & ~same_next].tolist(), xx[bad & ~same_next].tolist(), strict=True
            ):
                self._cand.setdefault(key, num)
            keep[idx[bad]] = False
        return k[keep], x[keep]

    def observe(self, stream: str, modulus: int, device_ids: I32, numbers: I64) -> Gaps:
        """Take one batch's frames of one stream (arrival order; ``device_ids`` internal,
        every one ≥ 0) and return the gaps they reveal."""
        out = Gaps(stream, modulus)
        n = int(device_ids.shape[0])
        if n == 0:
            return out
        w = self.window
        code = self._code(stream)
        keys = (device_ids.astype(np.int64) << _STREAM_BITS) | code
        order = np.argsort(keys, kind="stable")  # by device, arrival order kept
        k, x = keys[order], numbers[order].astype(np.int64)
        if modulus:
            x = x % modulus
        k, x = self._probation(k, x, modulus)
        n = int(k.shape[0])
        if n == 0:
            return out
        at_start = np.concatenate([[True], k[1:] != k[:-1]])
        starts = np.flatnonzero(at_start)
        group = np.cumsum(at_start) - 1
        uk = k[starts]
        ukl = uk.tolist()
        found = self._lookup(ukl)
        known = found >= 0
        slots = self._slots_for(ukl, found)
        high0 = np.where(known, self._high[slots], 0)
        seen0 = np.where(known, self._seen[slots], np.uint64(0))

        # each frame's difference to the one before it (the first: to the saved highest)
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = x[:-1]
        base = high0 % modulus if modulus else high0
        prev[starts] = np.where(known, base, x[starts])
        d = x - prev
        if modulus:
            half = modulus // 2
            d = (d + half) % modulus - half
        restart = (d < -w) | (d > self.max_gap)
        seg_start = restart | at_start
        cont = at_start & known[group] & ~restart  # continues the saved state
        # extended numbers: a segment starts at its wire number (fresh or restarted) or at
        # the saved highest plus its difference; then adds the differences
        inc = np.where(seg_start, np.where(cont, high0[group] + d, x), d)
        cs = np.cumsum(inc)
        seg = np.cumsum(seg_start) - 1
        seg_first = np.flatnonzero(seg_start)
        e = cs - (cs[seg_first] - inc[seg_first])[seg]
        out.restarts = int(restart.sum())

        # each segment's state before it: saved (continuing) or "nothing before the first"
        seg_cont = cont[seg_first]
        seg_group = group[seg_first]
        h_s = np.where(seg_cont, high0[seg_group], e[seg_first] - 1)
        b_s = np.where(seg_cont, seen0[seg_group], _ALL)

        # distinct numbers per segment
        pair = np.lexsort((e, seg))
        ps, pe = seg[pair], e[pair]
        distinct = np.concatenate([[True], (ps[1:] != ps[:-1]) | (pe[1:] != pe[:-1])])
        us, ue = ps[distinct], pe[distinct]
        hs = h_s[us]
        new = ue > hs
        back = hs - ue
        in_window = ~new & (back >= 1) & (back <= w)
        bit = np.where(in_window, back - 1, 0).astype(np.uint64)
        was_seen = ((b_s[us] >> bit) & np.uint64(1)).astype(np.bool_)
        fill = in_window & ~was_seen

        # gaps: between consecutive new numbers of a segment (the first: after the highest)
        nu, ne = us[new], ue[new]
        before = np.empty(ne.shape[0], dtype=np.int64)
        if ne.shape[0]:
            before[1:] = ne[:-1]
            first_new = np.concatenate([[True], nu[1:] != nu[:-1]])
            before[first_new] = h_s[nu[first_new]]
        skipped = ne - before - 1
        is_gap = skipped > 0
        gap_seg = nu[is_gap]
        lo, hi = before[is_gap] + 1, ne[is_gap] - 1
        if modulus:
            lo, hi = lo % modulus, hi % modulus
        seg_dev = (k[seg_first] >> _STREAM_BITS).astype(np.int32)
        out.device_ids, out.first, out.last = seg_dev[gap_seg], lo, hi
        out.missing = skipped[is_gap]
        fe = ue[fill]
        out.filled_ids = seg_dev[us[fill]]
        out.filled = fe % modulus if modulus else fe

        # the new state of each segment
        h1 = h_s.copy()
        np.maximum.at(h1, nu, ne)
        shift = h1 - h_s
        shifted = np.where(
            shift >= 64, np.uint64(0), b_s << np.minimum(shift, 63).astype(np.uint64)
        )
        mark_high = (shift >= 1) & (shift <= 64)  # the old highest arrived (or stood in)
        shifted |= np.where(
            mark_high, np.uint64(1) << np.maximum(shift - 1, 0).astype(np.uint64), np.uint64(0)
        )
        accepted = new | fill
        pos = h1[us] - 1 - ue
        set_bit = accepted & (pos >= 0) & (pos < w)
        np.bitwise_or.at(shifted, us[set_bit], np.uint64(1) << pos[set_bit].astype(np.uint64))
        if w < 64:
            shifted &= np.uint64((1 << w) - 1)

        # per device: the last segment's state; counts over its segments
        last_seg = np.concatenate([seg_group[1:] != seg_group[:-1], [True]])
        self._high[slots[seg_group[last_seg]]] = h1[last_seg]
        self._seen[slots[seg_group[last_seg]]] = shifted[last_seg]
        self._dirty[slots] = True
        out.counted_ids = (uk >> _STREAM_BITS).astype(np.int32)
        groups = uk.shape[0]
        out.received = np.bincount(seg_group[us[accepted]], minlength=groups).astype(np.int64)
        out.missing_by_device = np.bincount(
            seg_group[gap_seg], weights=out.missing, minlength=groups
        ).astype(np.int64)
        out.recovered_by_device = np.bincount(seg_group[us[fill]], minlength=groups).astype(
            np.int64
        )
        return out
