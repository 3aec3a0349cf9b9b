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
reports a second at most), one upsert of the states, one insert of a sample per touched lot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from decoders.tables import ENV_READINGS, PARKING_READINGS
from parking.config import ParkingConfig
from parking.debounce import Debounce, SpaceState, step
from storage.writer import TableWrite

AConn = psycopg.AsyncConnection[Any]
PRESENCE_METRIC = re.compile(rb"(?:presence|/?3302/0/5500)\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class Reports:
    """Space reports of a batch, sorted by (device, time), stable in arrival order."""

    device_id: npt.NDArray[np.int64]
    time_us: npt.NDArray[np.int64]
    occupied: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.device_id.shape[0])


def reports(writes: Sequence[TableWrite]) -> Reports:
    """The occupancy reports among a batch's rows (calibrating sensors' NULLs left out)."""
    dev: list[npt.NDArray[np.int64]] = []
    t: list[npt.NDArray[np.int64]] = []
    occ: list[npt.NDArray[np.bool_]] = []
    for w in writes:
        cols = w.rows.columns
        if w.spec.name == PARKING_READINGS.name:
            known = ~w.rows.nulls.get("occupied", np.zeros(len(w.rows), dtype=np.bool_))
            dev.append(cols["device_id"][known].astype(np.int64))
            t.append(cols["time"][known].astype(np.int64))
            occ.append(cols["occupied"][known].astype(np.bool_))
        elif w.spec.name == ENV_READINGS.name and len(w.rows):
            metric = cols["metric"]
            names = np.unique(metric)
            wanted = [n for n in names.tolist() if PRESENCE_METRIC.match(n)]
            if not wanted:
                continue
            pick = np.isin(metric, wanted)
            dev.append(cols["device_id"][pick].astype(np.int64))
            t.append(cols["time"][pick].astype(np.int64))
            occ.append(cols["value"][pick] != 0)
    if not dev:
        empty = np.zeros(0, dtype=np.int64)
        return Reports(empty, empty, np.zeros(0, dtype=np.bool_))
    d, tt, o = np.concatenate(dev), np.concatenate(t), np.concatenate(occ)
    order = np.lexsort((tt, d))
    return Reports(d[order], tt[order], o[order])


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


class OccupancyStage:
    """Applies a batch's space reports to the spaces' state, in the batch's transaction."""

    def __init__(self, cfg: ParkingConfig) -> None:
        self.rule = Debounce(
            frames=cfg.debounce_frames,
            hold_us=round(cfg.debounce_s * 1e6),
            flap_window_us=round(cfg.flap_window_s * 1e6),
        )

    async def within(self, conn: AConn, writes: Sequence[TableWrite]) -> int:
        """Apply the batch's reports; the number of confirmed changes of state."""
        rep = reports(writes)
        if not len(rep):
            return 0
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
        before = {k: s.changes for k, s in states.items()}
        for d, t, o in zip(
            rep.device_id.tolist(), rep.time_us.tolist(), rep.occupied.tolist(), strict=True
        ):
            states[d] = step(states.get(d), t, o, self.rule)
        changed = sum(1 for k, s in states.items() if before.get(k, -1) != s.changes)
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
        return changed
