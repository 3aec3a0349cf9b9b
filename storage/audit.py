"""The audit log: one row per state change (who, what, on which target, before and after).

Rows are written in the transaction of the change they record, so a change and its audit row
commit together or not at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from core.access import Principal

_INSERT = (
    "INSERT INTO audit_log (actor, actor_kind, action, target, before, after) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)


def _params(
    who: Principal, action: str, target: str, before: Any, after: Any
) -> tuple[object, ...]:
    return (
        who.name,
        who.kind.value,
        action,
        target,
        None if before is None else Jsonb(before),
        None if after is None else Jsonb(after),
    )


def record(
    conn: psycopg.Connection[Any],
    who: Principal,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
) -> None:
    """Log one state change in ``conn``'s current transaction."""
    conn.execute(_INSERT, _params(who, action, target, before, after))


async def record_async(
    conn: psycopg.AsyncConnection[Any],
    who: Principal,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
) -> None:
    """``record`` on an async connection."""
    await conn.execute(_INSERT, _params(who, action, target, before, after))


def list_entries(
    conn: psycopg.Connection[Any],
    *,
    action: str | None = None,
    actor: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit rows, newest first (keyset pages by id)."""
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if action:
        where.append("action = %s")
        params.append(action)
    if actor:
        where.append("actor = %s")
        params.append(actor)
    if before_id is not None:
        where.append("id < %s")
        params.append(before_id)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, time, actor, actor_kind, action, target, before, after FROM audit_log "
            f"WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s",
            [*params, limit],
        )
        return [
            {k: v.isoformat() if isinstance(v, datetime) else v for k, v in r.items()}
            for r in cur.fetchall()
        ]
