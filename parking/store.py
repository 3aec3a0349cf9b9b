"""Parking queries shared by the API, the command line and the gauges (synchronous psycopg)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

# A space's state now: its debounced state, or a pending change that has held for the
# debounce interval with no report against it (parking/debounce.py).
_LOTS = """
WITH spaces AS (
    SELECT d.lot, d.last_seen, s.device_id IS NOT NULL AS reported,
           CASE WHEN s.pending IS NOT NULL
                     AND s.pending_since <= now() - make_interval(secs => %(hold_s)s)
                THEN s.pending ELSE s.occupied END AS occupied,
           GREATEST(s.last_frame_at, s.changed_at) AS updated_at
    FROM devices d LEFT JOIN parking_spaces s ON s.device_id = d.id
    WHERE d.lot IS NOT NULL
), per_lot AS (
    SELECT lot, count(*) AS sensors, count(*) FILTER (WHERE occupied) AS occupied,
           count(*) FILTER (WHERE reported) AS reporting,
           count(*) FILTER (WHERE last_seen > now() - interval '24 hours') AS heard_24h,
           max(updated_at) AS updated_at
    FROM spaces GROUP BY lot
)
SELECT COALESCE(l.lot, p.lot) AS lot, COALESCE(l.name, '') AS name,
       l.lot IS NOT NULL AS registered, COALESCE(l.capacity, p.sensors) AS capacity,
       COALESCE(p.sensors, 0) AS sensors, COALESCE(p.reporting, 0) AS reporting,
       COALESCE(p.heard_24h, 0) AS heard_24h, COALESCE(p.occupied, 0) AS occupied,
       p.updated_at
FROM parking_lots l FULL JOIN per_lot p ON p.lot = l.lot
ORDER BY 1
"""


def lots_now(conn: psycopg.Connection[Any], hold_s: float) -> list[dict[str, Any]]:
    """Every lot (registered, or named by a sensor's ``lot``) with its spaces now."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_LOTS, {"hold_s": hold_s})
        out = []
        for r in cur.fetchall():
            capacity, occupied = int(r["capacity"]), int(r["occupied"])
            updated: datetime | None = r["updated_at"]
            out.append(
                {
                    "lot": r["lot"],
                    "name": r["name"],
                    "registered": r["registered"],
                    "capacity": capacity,
                    "sensors": int(r["sensors"]),
                    "reporting": int(r["reporting"]),
                    "heard_24h": int(r["heard_24h"]),
                    "occupied": occupied,
                    "free": max(capacity - occupied, 0),
                    "occupied_pct": round(100.0 * occupied / capacity, 1) if capacity else None,
                    "updated_at": updated.isoformat() if updated else None,
                }
            )
        return out
