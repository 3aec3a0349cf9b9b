"""The alerts tables: events written inside each batch's transaction, the operators' list and
acknowledgement, what a restart reads back, the engine's checkpoints.

Ordering: every transaction that writes alert events first takes one advisory lock (``lock``)
and holds it to its commit. Rule evaluation happens under the same lock, so batches are
evaluated in commit order, and event ids grow in commit order: a sink that delivers the
event log by id (``events_after``) never skips an event committed late.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts.runtimes import AlertEvent
from core.access import Principal
from storage import audit

LOCK_KEY = 0x616C657274  # "alert"
CHUNK = 500  # events per statement (WebAssembly TimescaleDB builds fail on large unnest)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

AConn = psycopg.AsyncConnection[Any]
Conn = psycopg.Connection[Any]


def at(us: int) -> datetime:
    """µs since the epoch as an exact timestamp."""
    return EPOCH + timedelta(microseconds=us)


def us_of(t: datetime) -> int:
    """A timestamp as µs since the epoch (exact)."""
    d = t - EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


async def lock(conn: AConn) -> None:
    """Serialise alert writers until this transaction ends (see the module docstring)."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))


_UPSERT = """
INSERT INTO alerts AS a (rule, subject, subject_key, device_id, severity, state, raised_at,
                         raised_value, cleared_at, cleared_value, details)
SELECT t.rule,
       COALESCE(t.subject, (SELECT d.external_id FROM devices d WHERE d.id = t.device_id),
                t.subject_key::text),
       t.subject_key, t.device_id, t.severity, t.state, t.raised_at, t.raised_value,
       t.cleared_at, t.cleared_value, t.details
FROM unnest(%s::text[], %s::text[], %s::int8[], %s::int4[], %s::text[], %s::text[],
            %s::timestamptz[], %s::float8[], %s::timestamptz[], %s::float8[], %s::jsonb[])
     AS t(rule, subject, subject_key, device_id, severity, state, raised_at, raised_value,
          cleared_at, cleared_value, details)
ON CONFLICT (rule, subject_key, raised_at) DO UPDATE SET
    state = CASE WHEN EXCLUDED.state = 'cleared' THEN 'cleared' ELSE a.state END,
    cleared_at = COALESCE(a.cleared_at, EXCLUDED.cleared_at),
    cleared_value = COALESCE(a.cleared_value, EXCLUDED.cleared_value),
    updated_at = now()
"""
_EVENTS = """
INSERT INTO alert_events (time, recorded_at, alert_id, rule, subject, subject_key, device_id,
                          severity, event, value, raised_at, details)
SELECT t.time, clock_timestamp(), a.id, t.rule, a.subject, t.subject_key, t.device_id,
       t.severity, t.event, t.value, t.raised_at, t.details
FROM unnest(%s::timestamptz[], %s::text[], %s::int8[], %s::int4[], %s::text[], %s::text[],
            %s::float8[], %s::timestamptz[], %s::jsonb[]) WITH ORDINALITY
     AS t(time, rule, subject_key, device_id, severity, event, value, raised_at, details, ord)
JOIN alerts a ON a.rule = t.rule AND a.subject_key = t.subject_key AND a.raised_at = t.raised_at
ORDER BY t.ord
ON CONFLICT (rule, subject_key, raised_at, event, time) DO NOTHING
"""


async def write_events(conn: AConn, events: Sequence[AlertEvent]) -> None:
    """Store events (raised/cleared) in the current transaction; idempotent."""
    for lo in range(0, len(events), CHUNK):
        await _write(conn, events[lo : lo + CHUNK])


async def _write(conn: AConn, events: Sequence[AlertEvent]) -> None:
    alerts: dict[tuple[str, int, int], dict[str, Any]] = {}
    for e in events:
        a = alerts.setdefault(
            (e.rule, e.subject_key, e.raised_at_us),
            {
                "rule": e.rule,
                "subject": e.subject,
                "subject_key": e.subject_key,
                "device_id": e.device_id,
                "severity": e.severity,
                "state": "raised",
                "raised_at": at(e.raised_at_us),
                "raised_value": e.raised_value,
                "cleared_at": None,
                "cleared_value": None,
                "details": Jsonb(e.details) if e.details and e.state == "raised" else None,
            },
        )
        if e.state == "cleared":
            a["state"], a["cleared_at"], a["cleared_value"] = "cleared", at(e.at_us), e.value
    rows = list(alerts.values())
    cols = list(rows[0])
    await conn.execute(_UPSERT, [[r[c] for r in rows] for c in cols])
    await conn.execute(
        _EVENTS,
        [
            [at(e.at_us) for e in events],
            [e.rule for e in events],
            [e.subject_key for e in events],
            [e.device_id for e in events],
            [e.severity for e in events],
            [e.state for e in events],
            [e.value for e in events],
            [at(e.raised_at_us) for e in events],
            [Jsonb(e.details) if e.details else None for e in events],
        ],
    )


# -- what a restart reads back --------------------------------------------------------------
@dataclass(slots=True)
class Saved:
    """The engine's last checkpoint and what happened after it."""

    snapshots: dict[str, tuple[str, bytes]]
    saved_at: datetime | None
    open_alerts: dict[str, list[tuple[int, int, float | None, str]]]
    watermarks: dict[str, list[tuple[int, int]]]


async def read_saved(conn: AConn) -> Saved:
    """Checkpoints, open alerts, and each subject's newest event after the checkpoint."""
    cur = await conn.execute("SELECT rule, definition, snapshot, saved_at FROM alert_state")
    snaps: dict[str, tuple[str, bytes]] = {}
    saved_at: datetime | None = None
    for rule, definition, snapshot, when in await cur.fetchall():
        snaps[rule] = (definition, bytes(snapshot))
        saved_at = when if saved_at is None else min(saved_at, when)
    cur = await conn.execute(
        "SELECT rule, subject_key, raised_at, raised_value, subject FROM alerts "
        "WHERE state <> 'cleared'"
    )
    open_alerts: dict[str, list[tuple[int, int, float | None, str]]] = {}
    for rule, key, raised, value, subject in await cur.fetchall():
        open_alerts.setdefault(rule, []).append((int(key), us_of(raised), value, subject))
    cur = await conn.execute(
        "SELECT rule, subject_key, max(time) FROM alert_events "
        "WHERE recorded_at >= %s AND event <> 'acknowledged' GROUP BY 1, 2",
        (saved_at or EPOCH,),
    )
    marks: dict[str, list[tuple[int, int]]] = {}
    for rule, key, newest in await cur.fetchall():
        marks.setdefault(rule, []).append((int(key), us_of(newest)))
    return Saved(snaps, saved_at, open_alerts, marks)


async def save_snapshot(conn: AConn, snapshot: dict[str, tuple[str, bytes]]) -> None:
    """Replace the checkpoints with these (rule → (definition, npz))."""
    async with conn.transaction():
        await conn.execute("DELETE FROM alert_state WHERE NOT (rule = ANY(%s))", (list(snapshot),))
        for rule, (definition, blob) in snapshot.items():
            await conn.execute(
                "INSERT INTO alert_state (rule, definition, snapshot, saved_at) "
                "VALUES (%s, %s, %s, now()) ON CONFLICT (rule) DO UPDATE SET "
                "definition = EXCLUDED.definition, snapshot = EXCLUDED.snapshot, "
                "saved_at = EXCLUDED.saved_at",
                (rule, definition, blob),
            )


async def last_seen(conn: AConn) -> tuple[list[int], list[int]]:
    """(device ids, last seen µs) of every device that has been seen (absence seeds)."""
    cur = await conn.execute(
        "SELECT id, (extract(epoch FROM last_seen) * 1000000)::int8 FROM devices "
        "WHERE last_seen IS NOT NULL"
    )
    rows = await cur.fetchall()
    return [int(r[0]) for r in rows], [int(r[1]) for r in rows]


# -- sinks: the event log as an outbox ------------------------------------------------------
EVENT_COLUMNS = (
    "id, time, alert_id, rule, subject, device_id, severity, event, value, raised_at, "
    "actor, note, details"
)


async def events_after(conn: AConn, event_id: int, limit: int) -> list[dict[str, Any]]:
    """Events with a larger id, oldest first."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {EVENT_COLUMNS} FROM alert_events WHERE id > %s ORDER BY id LIMIT %s",
        (event_id, limit),
    )
    return await cur.fetchall()


async def cursor_of(conn: AConn, sink: str) -> int:
    """Where ``sink`` is in the event log; a new sink starts at the end (no backlog)."""
    cur = await conn.execute(
        "INSERT INTO alert_sink_cursors (sink, event_id) "
        "SELECT %s, COALESCE(max(id), 0) FROM alert_events "
        "ON CONFLICT (sink) DO UPDATE SET sink = EXCLUDED.sink RETURNING event_id",
        (sink,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def advance_cursor(conn: AConn, sink: str, event_id: int) -> None:
    """``sink`` delivered everything up to ``event_id``."""
    await conn.execute(
        "UPDATE alert_sink_cursors SET event_id = %s, updated_at = now() WHERE sink = %s",
        (event_id, sink),
    )


async def give_up(conn: AConn, sink: str, event_id: int, attempts: int, reason: str) -> None:
    """``sink`` stopped retrying ``event_id`` (a permanent refusal): record it and move the
    cursor past it, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO alert_delivery_failures (sink, event_id, attempts, reason) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (sink, event_id) DO NOTHING",
            (sink, event_id, attempts, reason),
        )
        await advance_cursor(conn, sink, event_id)


async def newest_event(conn: AConn) -> int:
    """The largest event id (0 when none)."""
    cur = await conn.execute("SELECT COALESCE(max(id), 0) FROM alert_events")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


# -- the operators' API (synchronous: FastAPI's thread pool) ---------------------------------
ALERT_COLUMNS = (
    "id, rule, subject, device_id, severity, state, raised_at, raised_value, acknowledged_at, "
    "acknowledged_by, ack_note, cleared_at, cleared_value, details"
)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def list_alerts(
    conn: Conn,
    *,
    state: str | None = "open",
    rule: str | None = None,
    severity: str | None = None,
    subject: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Alerts, newest first (``state`` ``open`` = raised or acknowledged)."""
    where: list[str] = []
    args: list[Any] = []
    if state == "open":
        where.append("state <> 'cleared'")
    elif state is not None:
        where.append("state = %s")
        args.append(state)
    for col, val in (("rule", rule), ("severity", severity), ("subject", subject)):
        if val is not None:
            where.append(f"{col} = %s")
            args.append(val)
    if before is not None:
        where.append("id < %s")
        args.append(before)
    sql = f"SELECT {ALERT_COLUMNS} FROM alerts"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT %s"
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(sql, [*args, limit])
    return [_plain(r) for r in cur.fetchall()]


def get_alert(conn: Conn, alert_id: int) -> dict[str, Any] | None:
    """One alert with its event log."""
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = %s", (alert_id,))
    row = cur.fetchone()
    if row is None:
        return None
    cur.execute(
        "SELECT id, time, event, value, actor, note FROM alert_events "
        "WHERE alert_id = %s ORDER BY id",
        (alert_id,),
    )
    out = _plain(row)
    out["events"] = [_plain(e) for e in cur.fetchall()]
    return out


class AckError(LookupError):
    """Why an alert cannot be acknowledged (no such alert, or not raised)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def acknowledge(conn: Conn, alert_id: int, who: Principal, note: str | None) -> dict[str, Any]:
    """Acknowledge a raised alert as ``who`` (and log the event for the sinks, and the change
    in the audit log)."""
    by = who.name
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        cur = conn.cursor(row_factory=dict_row)
        cur.execute(
            "UPDATE alerts SET state = 'acknowledged', acknowledged_at = now(), "
            "acknowledged_by = %s, ack_note = %s, updated_at = now() "
            f"WHERE id = %s AND state = 'raised' RETURNING {ALERT_COLUMNS}, subject_key",
            (by, note, alert_id),
        )
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT state FROM alerts WHERE id = %s", (alert_id,))
            found = cur.fetchone()
            if found is None:
                raise AckError(404, f"no alert {alert_id}")
            raise AckError(409, f"alert {alert_id} is {found['state']}, not raised")
        conn.execute(
            "INSERT INTO alert_events (time, alert_id, rule, subject, subject_key, device_id, "
            "severity, event, raised_at, actor, note) "
            "VALUES (now(), %s, %s, %s, %s, %s, %s, 'acknowledged', %s, %s, %s)",
            (
                alert_id,
                row["rule"],
                row["subject"],
                row["subject_key"],
                row["device_id"],
                row["severity"],
                row["raised_at"],
                by,
                note,
            ),
        )
        audit.record(
            conn,
            who,
            "alert.acknowledge",
            str(alert_id),
            {"state": "raised"},
            {"state": "acknowledged", "note": note},
        )
    row.pop("subject_key")
    return _plain(row)


def counts(conn: Conn) -> list[dict[str, Any]]:
    """Open alerts per rule, severity and state."""
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(
        "SELECT rule, severity, state, count(*) AS alerts FROM alerts "
        "WHERE state <> 'cleared' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    return cur.fetchall()
