"""LwM2M registrations and downlink commands in the registry (migration 0010).

The service (async) keeps each device's current registration and sends queued commands; the
operator API and the command line (sync) queue commands, audited, and read their state.
A command is ``queued`` → ``sent`` → ``done`` (the device answered 2.xx), ``failed`` (4.xx or
5.xx, its code kept) or ``timeout`` (never answered).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row

from core.access import Principal
from storage import audit

AConn = psycopg.AsyncConnection[Any]
PATH = re.compile(r"^(/[0-9]{1,5}){3}$")
MAX_VALUE_CHARS = 1_024


class Operation(StrEnum):
    """Downlink operations the server queues (LwM2M Device Management interface)."""

    WRITE = "write"
    EXECUTE = "execute"


class CommandError(ValueError):
    """A command that cannot be queued (the message says why)."""


@dataclass(slots=True)
class Registration:
    """One device's current registration, as the service holds it."""

    device_id: int
    endpoint: str
    location: str
    lifetime_s: int
    binding: str
    address: tuple[str, int]
    object_links: str = ""
    profile: str | None = None


@dataclass(slots=True)
class Command:
    """A queued downlink operation."""

    id: int
    device_id: int
    operation: Operation
    path: str
    value: str | None


# -- the service (async) --------------------------------------------------------------------
async def save_registration(conn: AConn, reg: Registration, operation: str) -> str | None:
    """Store a Register or Update (expiry = now + lifetime) or a De-register; return the
    device's profile."""
    address = f"{reg.address[0]}:{reg.address[1]}"
    if operation == "deregister":
        await conn.execute(
            "UPDATE lwm2m_registrations SET deregistered_at = now() WHERE device_id = %s",
            (reg.device_id,),
        )
    elif operation == "register":
        await conn.execute(
            "INSERT INTO lwm2m_registrations (device_id, location, endpoint, lifetime_s, "
            "binding, object_links, address, registered_at, updated_at, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, now(), now(), now() + make_interval(secs => %s)) "
            "ON CONFLICT (device_id) DO UPDATE SET location = EXCLUDED.location, "
            "endpoint = EXCLUDED.endpoint, lifetime_s = EXCLUDED.lifetime_s, "
            "binding = EXCLUDED.binding, object_links = EXCLUDED.object_links, "
            "address = EXCLUDED.address, registered_at = now(), updated_at = now(), "
            "expires_at = EXCLUDED.expires_at, deregistered_at = NULL",
            (
                reg.device_id,
                reg.location,
                reg.endpoint,
                reg.lifetime_s,
                reg.binding,
                reg.object_links,
                address,
                reg.lifetime_s,
            ),
        )
    else:
        await conn.execute(
            "UPDATE lwm2m_registrations SET lifetime_s = %s, binding = %s, object_links = %s, "
            "address = %s, updated_at = now(), expires_at = now() + make_interval(secs => %s) "
            "WHERE device_id = %s",
            (
                reg.lifetime_s,
                reg.binding,
                reg.object_links,
                address,
                reg.lifetime_s,
                reg.device_id,
            ),
        )
    cur = await conn.execute("SELECT profile FROM devices WHERE id = %s", (reg.device_id,))
    row = await cur.fetchone()
    return None if row is None or row[0] is None else str(row[0])


async def load_registrations(conn: AConn) -> list[tuple[Registration, float]]:
    """Registrations not de-registered nor expired (what a restarted service still serves),
    each with the seconds it has left."""
    cur = await conn.execute(
        "SELECT r.device_id, r.endpoint, r.location, r.lifetime_s, r.binding, r.address, "
        "r.object_links, d.profile, extract(epoch FROM r.expires_at - now())::float8 "
        "FROM lwm2m_registrations r JOIN devices d ON d.id = r.device_id "
        "WHERE r.deregistered_at IS NULL AND r.expires_at > now()"
    )
    out = []
    for dev, ep, loc, lt, b, addr, links, profile, left in await cur.fetchall():
        host, _, port = str(addr).rpartition(":")
        out.append((Registration(dev, ep, loc, lt, b, (host, int(port)), links, profile), left))
    return out


async def queued_devices(conn: AConn, timeout_s: float) -> set[int]:
    """Devices with queued commands (one index scan, whatever the fleet's size); commands
    sent more than ``timeout_s`` ago and never finished (the process that sent them stopped)
    become ``timeout``."""
    await conn.execute(
        "UPDATE lwm2m_commands SET state = 'timeout', finished_at = now() "
        "WHERE state = 'sent' AND sent_at < now() - make_interval(secs => %s)",
        (timeout_s * 2,),
    )
    cur = await conn.execute("SELECT DISTINCT device_id FROM lwm2m_commands WHERE state = 'queued'")
    return {int(r[0]) for r in await cur.fetchall()}


async def due_commands(conn: AConn, device_id: int, limit: int = 16) -> list[Command]:
    """Queued commands of a device, oldest first, marked sent."""
    cur = await conn.execute(
        "UPDATE lwm2m_commands SET state = 'sent', sent_at = now() WHERE id IN ("
        " SELECT id FROM lwm2m_commands WHERE device_id = %s AND state = 'queued'"
        " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
        "RETURNING id, device_id, operation, path, value",
        (device_id, limit),
    )
    rows = sorted(await cur.fetchall())
    return [Command(int(i), int(d), Operation(op), p, v) for i, d, op, p, v in rows]


async def finish_command(conn: AConn, command_id: int, state: str, code: str | None) -> None:
    """Record what became of a sent command."""
    await conn.execute(
        "UPDATE lwm2m_commands SET state = %s, result_code = %s, finished_at = now() "
        "WHERE id = %s AND state = 'sent'",
        (state, code, command_id),
    )


# -- the operator API and the command line (sync) -----------------------------------------------
def check_command(operation: Operation, path: str, value: str | None) -> None:
    """``CommandError`` for a command that makes no sense."""
    if not PATH.match(path) or any(int(p) > 65535 for p in path[1:].split("/")):
        raise CommandError(f"path {path!r} is not /object/instance/resource")
    if operation is Operation.WRITE and value is None:
        raise CommandError("write needs a value")
    if value is not None and (len(value) > MAX_VALUE_CHARS or "\x00" in value):
        raise CommandError(f"value longer than {MAX_VALUE_CHARS} characters or with NUL")


def queue_command(
    conn: psycopg.Connection[Any],
    ref: str,
    operation: Operation,
    path: str,
    value: str | None,
    who: Principal,
) -> dict[str, Any] | None:
    """Queue a command for the device ``ref`` (external id or ``#<id>``), audited as
    ``who``; None when there is no such device."""
    check_command(operation, path, value)
    with conn.transaction():
        row = conn.execute(_DEVICE, [*_ref(ref)]).fetchone()
        if row is None:
            return None
        device_id, external_id = row
        cur = conn.execute(
            "INSERT INTO lwm2m_commands (device_id, operation, path, value, created_by) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (device_id, operation.value, path, value, who.name),
        ).fetchone()
        assert cur is not None
        after = {"id": cur[0], "operation": operation.value, "path": path, "value": value}
        audit.record(conn, who, "device.command", external_id, None, after)
    return get_command(conn, ref, int(cur[0]))


def get_command(conn: psycopg.Connection[Any], ref: str, command_id: int) -> dict[str, Any] | None:
    """One command of the device ``ref``, with its state and result."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT c.id, d.external_id AS device, c.operation, c.path, c.value, c.state, "
            "c.result_code, c.created_at, c.created_by, c.sent_at, c.finished_at "
            "FROM lwm2m_commands c JOIN devices d ON d.id = c.device_id "
            f"WHERE c.id = %s AND d.id = ({_DEVICE_ID})",
            [command_id, *_ref(ref)],
        )
        row = cur.fetchone()
    if row is None:
        return None
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


_DEVICE_ID = (
    "SELECT id FROM devices "
    "WHERE (%s::int IS NULL OR id = %s) AND (%s::text IS NULL OR external_id = %s)"
)
_DEVICE = (
    "SELECT id, external_id FROM devices "
    "WHERE (%s::int IS NULL OR id = %s) AND (%s::text IS NULL OR external_id = %s)"
)


def _ref(ref: str) -> tuple[int | None, int | None, str | None, str | None]:
    if ref.startswith("#") and ref[1:].isdigit():
        return int(ref[1:]), int(ref[1:]), None, None
    return None, None, ref, ref
