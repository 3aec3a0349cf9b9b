"""Frame loss in the service: gaps found after each commit, written right after.

Threading: ``observe`` runs on the event loop in the pipeline's after-commit bookkeeping,
batch by batch in commit order (numpy, no I/O), so the state per device never races
between writer workers. What it finds waits in memory; ``run`` writes it every
``frame_loss_flush_s`` with its own connection, in one transaction: the gaps
(``device_frame_gaps``), gaps late frames filled (their ``missing`` goes down), the hourly
counts behind the 24 h loss ratio (``device_frame_counts``), the detector's state
(``device_frame_state``); then counts the metrics by profile. On a database error the
findings are kept and written by a later flush. At start ``load`` reads the saved state, so
a clean restart neither forgets a device's counter nor invents a gap; a crash loses the
last flush interval's findings and may show its frames as a gap (docs/design/0011).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import psycopg

from core.frames import Decoded
from core.metrics import Metrics
from device_registry.gaps import GapDetector, Gaps
from device_registry.resolver import DeviceResolver

log = logging.getLogger(__name__)
Conn = psycopg.AsyncConnection[tuple[object, ...]]
COUNTS_KEPT = "8 days"  # hourly counts older than this are deleted (the ratio needs 24 h)


def _ints(values: npt.NDArray[np.integer]) -> str:
    """An integer array as a PostgreSQL array literal (cheaper than per-element dumping)."""
    return "{" + ",".join(map(str, values.tolist())) + "}"


_GAPS_SQL = (
    "INSERT INTO device_frame_gaps (device_id, stream, first_missing, last_missing, missing) "
    "SELECT * FROM unnest(%s::int4[], %s::text[], %s::int8[], %s::int8[], %s::int8[])"
)
# a late frame takes one off the newest gap of its device and stream that holds its number
_FILLS_SQL = """
WITH f AS (SELECT * FROM unnest(%s::int4[], %s::text[], %s::int8[]) AS f(device_id, stream, n)),
hit AS (
    SELECT DISTINCT ON (f.device_id, f.stream, f.n) g.device_id, g.stream, g.first_missing,
           g.detected_at
    FROM f JOIN device_frame_gaps g ON g.device_id = f.device_id AND g.stream = f.stream
    WHERE g.detected_at > now() - interval '7 days' AND g.missing > 0
      AND CASE WHEN g.first_missing <= g.last_missing
               THEN f.n BETWEEN g.first_missing AND g.last_missing
               ELSE f.n >= g.first_missing OR f.n <= g.last_missing END
    ORDER BY f.device_id, f.stream, f.n, g.detected_at DESC
),
per_gap AS (
    SELECT device_id, stream, first_missing, detected_at, count(*) AS n FROM hit GROUP BY 1, 2, 3, 4
)
UPDATE device_frame_gaps g SET missing = GREATEST(g.missing - p.n, 0)
FROM per_gap p
WHERE g.device_id = p.device_id AND g.stream = p.stream AND g.first_missing = p.first_missing
  AND g.detected_at = p.detected_at
"""
_COUNTS_SQL = (
    "INSERT INTO device_frame_counts AS c (device_id, hour, received, missing) "
    "SELECT id, date_trunc('hour', now()), r, m "
    "FROM unnest(%s::int4[], %s::int8[], %s::int8[]) AS x(id, r, m) "
    "ON CONFLICT (device_id, hour) DO UPDATE "
    "SET received = c.received + excluded.received, missing = c.missing + excluded.missing"
)
_STATE_SQL = (
    "INSERT INTO device_frame_state AS s (device_id, stream, highest, seen) "
    "SELECT id, %s, h, w FROM unnest(%s::int4[], %s::int8[], %s::int8[]) AS x(id, h, w) "
    "ON CONFLICT (device_id, stream) DO UPDATE "
    "SET highest = excluded.highest, seen = excluded.seen, updated_at = now()"
)
_PROFILES_SQL = (
    "SELECT COALESCE(d.profile, ''), sum(x.r), sum(x.m), sum(x.f) "
    "FROM unnest(%s::int4[], %s::int8[], %s::int8[], %s::int8[]) AS x(id, r, m, f) "
    "JOIN devices d ON d.id = x.id GROUP BY 1"
)


class FrameLoss:
    """The detector in the service, its findings waiting to be written, and the writer."""

    def __init__(
        self, resolver: DeviceResolver, metrics: Metrics, detector: GapDetector | None = None
    ) -> None:
        self.detector = detector or GapDetector()
        self._resolver = resolver
        self._metrics = metrics
        self._pending: list[Gaps] = []
        self.flushed = 0
        """Flushes done, empty ones too (tests wait for one after their frames)."""
        self._flushes_since_prune = 0

    @property
    def pending(self) -> int:
        """Findings not written yet."""
        return len(self._pending)

    async def load(self, conn: Conn) -> int:
        """Seed the detector with the saved state; return how many (device, stream) pairs."""
        cur = await conn.execute("SELECT device_id, stream, highest, seen FROM device_frame_state")
        rows = await cur.fetchall()
        by_stream: dict[str, list[tuple[int, int, int]]] = {}
        for dev, stream, high, seen in rows:
            by_stream.setdefault(str(stream), []).append(
                (int(str(dev)), int(str(high)), int(str(seen)))
            )
        for stream, items in by_stream.items():
            arr = np.array(items, dtype=np.int64)
            self.detector.seed(
                stream, arr[:, 0].astype(np.int32), arr[:, 1], arr[:, 2].view(np.uint64)
            )
        self.detector.state()  # what was just read is not "changed"
        return len(rows)

    def observe(
        self, decoded: Decoded, frame_devices: npt.NDArray[np.int32], stored: npt.NDArray[np.bool_]
    ) -> None:
        """Take a committed batch's frame numbers: ``frame_devices`` is each frame's internal
        device id where its rows named one (-1 elsewhere), ``stored`` which frames were
        stored (not dead-lettered)."""
        for num in decoded.numbers:
            if not len(num):
                continue
            keep = stored[num.frame_index]
            ids = frame_devices[num.frame_index]
            unknown = keep & (ids < 0)  # frames without rows (e.g. a JT/T 808 heartbeat)
            if unknown.any():
                ids = ids.copy()
                ids[unknown] = self._resolver.index.resolve(num.devices[unknown])
            keep &= ids >= 0
            found = self.detector.observe(
                num.stream, num.modulus, ids[keep].astype(np.int32), num.numbers[keep]
            )
            if found.counted_ids.shape[0]:
                self._pending.append(found)
            if found.restarts:
                log.info(
                    "frame loss: %d device counter(s) of stream %s restarted (reboot); "
                    "counting afresh from their new numbers",
                    found.restarts,
                    num.stream,
                )

    async def flush(self, conn: Conn) -> int:
        """Write what was found since the last flush; return the gaps written. On a database
        error everything is kept for the next flush."""
        pending, self._pending = self._pending, []
        state = self.detector.state()
        if not pending and not state:
            self.flushed += 1
            return 0
        try:
            totals = await self._write(conn, pending, state)
        except psycopg.Error:
            self._pending = pending + self._pending
            for stream, ids, _, _ in state:
                self.detector.changed(stream, ids)
            raise
        m = self._metrics
        for profile, received, missing, recovered in totals:
            m.frames_numbered.labels(profile).inc(received)
            m.frames_missing.labels(profile).inc(missing)
            m.frames_recovered.labels(profile).inc(recovered)
        self.flushed += 1
        return sum(int(g.device_ids.shape[0]) for g in pending)

    async def _write(
        self,
        conn: Conn,
        pending: Sequence[Gaps],
        state: list[
            tuple[str, npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.uint64]]
        ],
    ) -> list[tuple[str, int, int, int]]:
        cat = np.concatenate
        ids = cat([g.counted_ids for g in pending] or [np.empty(0, np.int32)])
        uniq, where = np.unique(ids, return_inverse=True)

        def per_device(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
            values = cat(parts or [np.empty(0, np.int64)])
            return np.bincount(where, weights=values, minlength=uniq.shape[0]).astype(np.int64)

        received = per_device([g.received for g in pending])
        missing = per_device([g.missing_by_device for g in pending])
        recovered = per_device([g.recovered_by_device for g in pending])
        gap_ids = cat([g.device_ids for g in pending] or [np.empty(0, np.int32)])
        fill_ids = cat([g.filled_ids for g in pending] or [np.empty(0, np.int32)])
        async with conn.transaction():
            if gap_ids.shape[0]:
                await conn.execute(
                    _GAPS_SQL,
                    (
                        _ints(gap_ids),
                        [g.stream for g in pending for _ in range(g.device_ids.shape[0])],
                        _ints(cat([g.first for g in pending])),
                        _ints(cat([g.last for g in pending])),
                        _ints(cat([g.missing for g in pending])),
                    ),
                )
            if fill_ids.shape[0]:
                await conn.execute(
                    _FILLS_SQL,
                    (
                        _ints(fill_ids),
                        [g.stream for g in pending for _ in range(g.filled_ids.shape[0])],
                        _ints(cat([g.filled for g in pending])),
                    ),
                )
            if uniq.shape[0]:
                await conn.execute(
                    _COUNTS_SQL, (_ints(uniq), _ints(received), _ints(missing - recovered))
                )
            for stream, dev, high, seen in state:
                await conn.execute(
                    _STATE_SQL, (stream, _ints(dev), _ints(high), _ints(seen.view(np.int64)))
                )
            self._flushes_since_prune += 1
            if self._flushes_since_prune >= 3600:
                self._flushes_since_prune = 0
                await conn.execute(
                    f"DELETE FROM device_frame_counts WHERE hour < now() - interval '{COUNTS_KEPT}'"
                )
            if not uniq.shape[0]:
                return []
            cur = await conn.execute(
                _PROFILES_SQL, (_ints(uniq), _ints(received), _ints(missing), _ints(recovered))
            )
            rows = await cur.fetchall()
        return [(str(p), int(str(r)), int(str(m)), int(str(f))) for p, r, m, f in rows]

    async def run(self, conninfo: str, flush_s: float, stop: asyncio.Event) -> None:
        """Until ``stop``: flush every ``flush_s``; then one final flush."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    while not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), flush_s)
                        await self._flush_logged(conn)
                    await self._flush_logged(conn)
                    return
            except psycopg.OperationalError as exc:
                log.warning("frame loss: database unavailable (%s); retrying", exc)
                if stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(flush_s, 2.0))

    async def _flush_logged(self, conn: Conn) -> None:
        try:
            await self.flush(conn)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            log.warning(
                "frame loss: gaps of %d batches not written yet (%s); will retry",
                len(self._pending),
                exc,
            )
