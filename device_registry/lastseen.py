"""Last seen, batched: committed batches note (device, receive time); one UPDATE per flush.

Never a write per frame: ``note`` appends two arrays, ``flush`` reduces them to the latest
time per device with numpy and writes them with one ``UPDATE … FROM unnest(…)`` that only
moves ``last_seen`` forward (so out-of-order flushes from several workers are harmless).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import psycopg

_CHUNK = 1_000  # ids per statement (WebAssembly TimescaleDB builds fail on larger unnest)


def _array(values: npt.NDArray[np.integer]) -> str:
    """An integer array as a PostgreSQL array literal (``{1,2,3}``): much cheaper to build
    than psycopg's per-element list dumping, which py-spy showed as a visible share of the
    service's CPU with 100,000 devices."""
    return "{" + ",".join(map(str, values.tolist())) + "}"


class LastSeen:
    """Pending last-seen times, keyed by internal device id."""

    def __init__(self) -> None:
        self._ids: list[npt.NDArray[np.int32]] = []
        self._times: list[npt.NDArray[np.int64]] = []
        self.flushed = 0

    def note(self, ids: npt.NDArray[np.int32], received_us: npt.NDArray[np.int64]) -> None:
        """Record that these devices sent frames at these receive times (µs since epoch)."""
        keep = ids >= 0
        if keep.any():
            self._ids.append(ids[keep].astype(np.int32))
            self._times.append(received_us[keep].astype(np.int64))

    def take(self) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """The latest time per device since the last take, and forget them."""
        if not self._ids:
            return np.empty(0, np.int32), np.empty(0, np.int64)
        ids, times = np.concatenate(self._ids), np.concatenate(self._times)
        self._ids, self._times = [], []
        order = np.lexsort((times, ids))  # by id, then time: the last of each id is its max
        ids, times = ids[order], times[order]
        last = np.append(ids[1:] != ids[:-1], True)
        return ids[last], times[last]

    async def flush(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
        """Write the pending times; return how many devices were written. On a database
        error the times are put back, so nothing is lost but a later flush's time."""
        ids, times = self.take()
        if not ids.shape[0]:
            return 0
        try:
            for lo in range(0, ids.shape[0], _CHUNK):
                await conn.execute(
                    "UPDATE devices d SET last_seen = u.seen "
                    "FROM (SELECT id, to_timestamp(t / 1e6) AS seen "
                    "      FROM unnest(%s::int4[], %s::int8[]) AS x(id, t)) AS u "
                    "WHERE d.id = u.id AND (d.last_seen IS NULL OR d.last_seen < u.seen)",
                    (_array(ids[lo : lo + _CHUNK]), _array(times[lo : lo + _CHUNK])),
                )
        except psycopg.Error:
            self._ids.append(ids)
            self._times.append(times)
            raise
        self.flushed += int(ids.shape[0])
        return int(ids.shape[0])
