"""When each simulated device reports: a fixed interval and a per-device phase.

Device ``d``'s ``k``-th report is at ``phase[d] + k × interval`` after the run's start (times in
µs). Phases are sorted once, so the devices due in a window are one or two contiguous runs of
the sorted order (found with ``searchsorted``): a tick over a million devices costs what the
frames it yields cost, not a pass over the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulators.keyed import stream_id, uniform

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Due:
    """Reports due in a window: device indices, report counters and times (µs from start)."""

    devices: I64
    seqs: I64
    times_us: I64

    def __len__(self) -> int:
        return int(self.devices.shape[0])

    def take(self, keep: npt.NDArray[np.bool_] | I64) -> Due:
        """A subset."""
        return Due(self.devices[keep], self.seqs[keep], self.times_us[keep])

    @staticmethod
    def concat(parts: list[Due]) -> Due:
        """All parts, in order."""
        if not parts:
            empty = np.empty(0, dtype=np.int64)
            return Due(empty, empty, empty)
        return Due(
            np.concatenate([p.devices for p in parts]),
            np.concatenate([p.seqs for p in parts]),
            np.concatenate([p.times_us for p in parts]),
        )


class Schedule:
    """Report times of ``count`` devices every ``interval_us``, phases from the seed.

    ``resolution_us`` is the format's time resolution (1 s for the formats that carry whole
    seconds): phases are whole multiples of it in [resolution, interval], so each device's
    reports have distinct, exactly representable times.
    """

    def __init__(
        self, count: int, interval_us: int, resolution_us: int, seed: int, group: str
    ) -> None:
        if interval_us < resolution_us:
            raise ValueError("the interval is shorter than the format's time resolution")
        self.count, self.interval_us = count, interval_us
        steps = interval_us // resolution_us
        u = uniform(seed, stream_id(f"phase:{group}"), np.arange(count))
        phases = (np.floor(u * steps).astype(np.int64) + 1) * resolution_us
        self._order = np.argsort(phases, kind="stable").astype(np.int64)
        self._phases = phases[self._order]

    def phase_us(self, devices: I64) -> I64:
        """Each device's first report time."""
        out = np.empty(self.count, dtype=np.int64)
        out[self._order] = self._phases
        return out[devices]

    def due(self, start_us: int, end_us: int) -> Due:
        """Reports with times in (start_us, end_us], ordered by time."""
        parts: list[Due] = []
        a = start_us
        while a < end_us:
            b = min(end_us, a + self.interval_us)
            parts.append(self._window(a, b))
            a = b
        return Due.concat(parts)

    def _window(self, a: int, b: int) -> Due:
        iv = self.interval_us
        base = a - a % iv  # start of the interval holding a
        lo, hi = a - base, b - base  # 0 <= lo < hi <= lo + iv < 2 iv
        idx = [self._range(lo, min(hi, iv), base)]
        if hi > iv:
            idx.append(self._range(0, hi - iv, base + iv))
        return Due.concat(idx)

    def _range(self, lo: int, hi: int, base: int) -> Due:
        """Phases in (lo, hi], at ``base + phase``."""
        i = int(np.searchsorted(self._phases, lo, side="right"))
        j = int(np.searchsorted(self._phases, hi, side="right"))
        times = base + self._phases[i:j]
        devices = self._order[i:j]
        seqs = (times - self._phases[i:j]) // self.interval_us
        return Due(devices, seqs, times)
