"""The occupancy stage: each batch's space reports move the spaces' debounced state and the
lots' occupancy, inside the batch's transaction (before the alert rules).

Reports are the ``occupied`` column of ``parking_readings`` (the ``parking-sensor`` frame) and
IPSO Presence 3302 resource 5500 in ``env_readings`` (metric ``presence`` from LwM2M TLV, or a
SenML record named ``3302/0/5500``; instance 0 only: one device senses one space). The rows
the pipeline hands over are committed together with what this stage writes, so a frame is
acknowledged only once its space's state is stored too; a retried transaction or a
redelivered frame applies nothing twice (parking/debounce.py ignores reports no newer than the
space's latest).

Per batch: one ``SELECT … FOR UPDATE`` of the spaces it names (in id order, so two workers
never deadlock), the debounce in Python (a city's spaces report a few times an hour: tens of
reports a second at most), one upsert of the states, one insert of a sample per touched lot,
and one query for what the alert rules get: a ``parking_space_status`` row per reported space
that is in a lot (its state, time unchanged, flaps, how many other spaces of its lot changed
since, the lot's fill).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from core.frames import TableRows
from decoders.tables import ENV_READINGS, PARKING_READINGS, PARKING_SPACE_STATUS
from parking.config import ParkingConfig
from parking.debounce import Debounce, SpaceState, step
from storage.writer import TableWrite

AConn = psycopg.AsyncConnection[Any]
log = logging.getLogger(__name__)
# env_readings metrics that are occupancy reports: SenML "presence", IPSO Presence (3302)
# Digital Input State (5500) as LwM2M names it, with or without the leading "/"
PRESENCE_METRICS = np.array([b"presence", b"3302/0/5500", b"/3302/0/5500"], dtype=np.bytes_)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class Reports:
    """Space reports of a batch, sorted by (device, time), stable in arrival order."""

    device_id: npt.NDArray[np.int64]
    time_us: npt.NDArray[np.int64]
    occupied: npt.NDArray[np.bool_]
    devices: npt.NDArray[np.bytes_]  # external ids
    frame_index: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.device_id.shape[0])

    def subset(self, keep: npt.NDArray[np.bool_]) -> Reports:
        """The reports where ``keep`` is true (still sorted)."""
        return Reports(
            self.device_id[keep],
            self.time_us[keep],
            self.occupied[keep],
            self.devices[keep],
            self.frame_index[keep],
        )


def reports(writes: Sequence[TableWrite]) -> Reports:
    """The occupancy reports among a batch's rows (calibrating sensors' NULLs left out)."""
    dev: list[npt.NDArray[np.int64]] = []
    t: list[npt.NDArray[np.int64]] = []
    occ: list[npt.NDArray[np.bool_]] = []
    ext: list[npt.NDArray[np.bytes_]] = []
    frames: list[npt.NDArray[np.int32]] = []
    for w in writes:
        cols = w.rows.columns
        if w.spec.name == PARKING_READINGS.name:
            known = ~w.rows.nulls.get("occupied", np.zeros(len(w.rows), dtype=np.bool_))
            dev.append(cols["device_id"][known].astype(np.int64))
            t.append(cols["time"][known].astype(np.int64))
            occ.append(cols["occupied"][known].astype(np.bool_))
            ext.append(w.rows.devices[known])
            frames.append(w.rows.frame_index[known])
        elif w.spec.name == ENV_READINGS.name and len(w.rows):
            pick = np.isin(cols["metric"], PRESENCE_METRICS)
            if not pick.any():
                continue
            dev.append(cols["device_id"][pick].astype(np.int64))
            t.append(cols["time"][pick].astype(np.int64))
            occ.append(cols["value"][pick] != 0)
            ext.append(w.rows.devices[pick])
            frames.append(w.rows.frame_index[pick])
    if not dev:
        empty = np.zeros(0, dtype=np.int64)
        return Reports(
            empty, empty, np.zeros(0, dtype=np.bool_), np.zeros(0, "S1"), np.zeros(0, np.int32)
        )
    d, tt, o = np.concatenate(dev), np.concatenate(t), np.concatenate(occ)
    order = np.lexsort((tt, d))
    e, f = np.concatenate(ext), np.concatenate(frames)
    return Reports(d[order], tt[order], o[order], e[order], f[order])


def _us(ts: datetime | None) -> int | None:
    return None if ts is None else round((ts - _EPOCH).total_seconds() * 1e6)


def _ts(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, UTC)


_SELECT = """
SELECT device_id, occupied, changed_at, last_frame_at, pending, pending_since, pending_frames,
       changes, flaps, flap_window_at, flaps_in_window
FROM parking_spaces WHERE device_id = ANY(%s) ORDER BY device_id FOR UPDATE
"""
_UPSERT = """
INSERT INTO parking_spaces (device_id, occupied, changed_at, last_frame_at, pending,
    pending_since, pending_frames, changes, flaps, flap_window_at, flaps_in_window)
SELECT * FROM unnest(%s::int4[], %s::bool[], %s::timestamptz[], %s::timestamptz[], %s::bool[],
    %s::timestamptz[], %s::int4[], %s::int8[], %s::int8[], %s::timestamptz[], %s::int4[])
ON CONFLICT (device_id) DO UPDATE SET occupied = EXCLUDED.occupied,
    changed_at = EXCLUDED.changed_at, last_frame_at = EXCLUDED.last_frame_at,
    pending = EXCLUDED.pending, pending_since = EXCLUDED.pending_since,
    pending_frames = EXCLUDED.pending_frames, changes = EXCLUDED.changes,
    flaps = EXCLUDED.flaps, flap_window_at = EXCLUDED.flap_window_at,
    flaps_in_window = EXCLUDED.flaps_in_window
"""
# one sample per lot the batch reported on: its confirmed occupied count and capacity (a lot
# without a parking_lots row counts its sensed spaces)
_SAMPLE = """
INSERT INTO parking_lot_occupancy (time, lot, occupied, capacity)
SELECT r.at, d.lot, count(*) FILTER (WHERE s.occupied),
       COALESCE(max(l.capacity), count(*))
FROM (SELECT d.lot, max(x.at) AS at
      FROM unnest(%s::int4[], %s::timestamptz[]) AS x(device_id, at)
      JOIN devices d ON d.id = x.device_id AND d.lot IS NOT NULL
      GROUP BY d.lot) r
JOIN devices d ON d.lot = r.lot
JOIN parking_spaces s ON s.device_id = d.id
LEFT JOIN parking_lots l ON l.lot = r.lot
GROUP BY r.at, d.lot
ON CONFLICT (lot, time) DO UPDATE SET occupied = EXCLUDED.occupied, capacity = EXCLUDED.capacity
"""
# for the alert rules: each reported space's lot, how many other spaces of the lot changed
# since it did, and the lot's fill
_STATUS = """
WITH x AS (
    SELECT x.device_id, x.changed_at, d.lot
    FROM unnest(%s::int4[], %s::timestamptz[]) AS x(device_id, changed_at)
    JOIN devices d ON d.id = x.device_id AND d.lot IS NOT NULL
), lots AS (
    SELECT d.lot, count(*) FILTER (WHERE s.occupied) AS occupied,
           COALESCE(max(l.capacity), count(*)) AS capacity
    FROM devices d JOIN parking_spaces s ON s.device_id = d.id
    LEFT JOIN parking_lots l ON l.lot = d.lot
    WHERE d.lot IN (SELECT lot FROM x)
    GROUP BY d.lot
)
SELECT x.device_id, x.lot,
       (SELECT count(*) FROM parking_spaces s JOIN devices d ON d.id = s.device_id
        WHERE d.lot = x.lot AND s.device_id <> x.device_id AND s.changed_at > x.changed_at),
       lots.occupied, lots.capacity
FROM x JOIN lots ON lots.lot = x.lot
"""


class OccupancyStage:
    """Applies a batch's space reports to the spaces' state, in the batch's transaction."""

    def __init__(
        self, cfg: ParkingConfig, clock_us: Callable[[], int] = lambda: time.time_ns() // 1000
    ) -> None:
        self.rule = Debounce(
            frames=cfg.debounce_frames,
            hold_us=round(cfg.debounce_s * 1e6),
            flap_window_us=round(cfg.flap_window_s * 1e6),
        )
        self.max_ahead_us = round(cfg.max_ahead_s * 1e6)
        self.clock_us = clock_us
        self.ahead = 0
        """Reports left out for their time ahead of the clock (since the service began)."""
        self._ahead_logged = -math.inf

    def _drop_ahead(self, rep: Reports) -> Reports:
        # a report from the future would make every later (true) report of its space "no
        # newer than the latest" (parking/debounce.py) and freeze the space until that time
        ahead = rep.time_us > self.clock_us() + self.max_ahead_us
        if not ahead.any():
            return rep
        n = int(ahead.sum())
        self.ahead += n
        now = time.monotonic()
        if now - self._ahead_logged >= 60.0:
            self._ahead_logged = now
            first = rep.devices[ahead][0].decode(errors="replace")
            log.warning(
                "parking: %d space reports dated over %.0f s ahead of the clock (e.g. device "
                "%s) stored but not applied to their spaces (%d since start)",
                n,
                self.max_ahead_us / 1e6,
                first,
                self.ahead,
            )
        return rep.subset(~ahead)

    async def within(self, conn: AConn, writes: Sequence[TableWrite]) -> list[TableWrite]:
        """Apply the batch's reports; the ``parking_space_status`` rows for the alert rules
        (one per reported space in a lot; not stored)."""
        rep = self._drop_ahead(reports(writes))
        if not len(rep):
            return []
        ids = np.unique(rep.device_id)
        cur = await conn.execute(_SELECT, (ids.tolist(),))
        states: dict[int, SpaceState] = {}
        for row in await cur.fetchall():
            states[int(row[0])] = SpaceState(
                occupied=bool(row[1]),
                changed_at_us=_us(row[2]) or 0,
                last_frame_us=_us(row[3]) or 0,
                pending=row[4],
                pending_since_us=_us(row[5]),
                pending_frames=int(row[6]),
                changes=int(row[7]),
                flaps=int(row[8]),
                flap_window_us=_us(row[9]),
                flaps_in_window=int(row[10]),
            )
        for d, t, o in zip(
            rep.device_id.tolist(), rep.time_us.tolist(), rep.occupied.tolist(), strict=True
        ):
            states[d] = step(states.get(d), t, o, self.rule)
        keys = sorted(states)
        st = [states[k] for k in keys]
        await conn.execute(
            _UPSERT,
            (
                keys,
                [s.occupied for s in st],
                [_ts(s.changed_at_us) for s in st],
                [_ts(s.last_frame_us) for s in st],
                [s.pending for s in st],
                [_ts(s.pending_since_us) for s in st],
                [s.pending_frames for s in st],
                [s.changes for s in st],
                [s.flaps for s in st],
                [_ts(s.flap_window_us) for s in st],
                [s.flaps_in_window for s in st],
            ),
        )
        await conn.execute(
            _SAMPLE, (rep.device_id.tolist(), [_ts(t) for t in rep.time_us.tolist()])
        )
        return await self._status(conn, rep, states)

    async def _status(
        self, conn: AConn, rep: Reports, states: dict[int, SpaceState]
    ) -> list[TableWrite]:
        # each space's latest report of the batch (reports are sorted by device, time)
        last = np.ones(len(rep), dtype=np.bool_)
        last[:-1] = rep.device_id[1:] != rep.device_id[:-1]
        dev = rep.device_id[last]
        cur = await conn.execute(
            _STATUS, (dev.tolist(), [_ts(states[d].changed_at_us) for d in dev.tolist()])
        )
        found = {int(r[0]): r[1:] for r in await cur.fetchall()}
        if not found:
            return []
        pick = np.flatnonzero(np.isin(dev, list(found)))
        at = np.flatnonzero(last)[pick]
        dev = dev[pick]
        t = rep.time_us[at]
        rows = [found[d] for d in dev.tolist()]
        window = self.rule.flap_window_us
        spaces = [states[d] for d in dev.tolist()]
        lot_occupied = np.array([int(r[2]) for r in rows], dtype=np.int32)
        lot_capacity = np.array([int(r[3]) for r in rows], dtype=np.int32)
        status = TableRows(
            table=PARKING_SPACE_STATUS.name,
            columns={
                "time": t,
                "device_id": dev.astype(np.int32),
                "lot": np.array([str(r[0]).encode() for r in rows], dtype=np.bytes_),
                "occupied": np.array([s.occupied for s in spaces], dtype=np.bool_),
                "unchanged_s": (t - np.array([s.changed_at_us for s in spaces])) / 1e6,
                "flaps": np.array(
                    [
                        s.flaps_in_window
                        if s.flap_window_us is not None and tt - s.flap_window_us < window
                        else 0
                        for s, tt in zip(spaces, t.tolist(), strict=True)
                    ],
                    dtype=np.int32,
                ),
                "lot_changes": np.array([int(r[1]) for r in rows], dtype=np.int32),
                "lot_occupied": lot_occupied,
                "lot_capacity": lot_capacity,
                "occupied_pct": 100.0 * lot_occupied / np.maximum(lot_capacity, 1),
            },
            devices=rep.devices[at],
            frame_index=rep.frame_index[at],
        )
        return [TableWrite(PARKING_SPACE_STATUS, status)]
