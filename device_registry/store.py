"""Registry queries shared by the CLI and the operator API (synchronous psycopg).

Lists page by internal id (keyset pagination, cheap at any depth of a 10M-row table);
online status comes from the ``device_status_view`` (offline after ``offline_after`` × the
profile's report interval without a frame).
"""

from __future__ import annotations

from datetime import datetime
from typing import IO, Any

import psycopg
from psycopg.rows import dict_row

from core.access import Principal
from storage import audit

DEVICE_FIELDS = (
    "id",
    "external_id",
    "profile",
    "kind",
    "status",
    "tenant",
    "district",
    "lat",
    "lon",
    "road",
    "road_km",
    "lot",
    "space",
    "install",
    "provisioned",
    "created_at",
    "updated_at",
    "last_seen",
)
_SELECT = (
    "SELECT "
    + ", ".join(f"d.{c}" for c in DEVICE_FIELDS)
    + ", v.online, v.offline_after_s, d.credential_hash IS NOT NULL AS has_credential "
    "FROM devices d JOIN device_status_view v ON v.id = d.id"
)
EXPORT_FIELDS = (
    "external_id",
    "profile",
    "kind",
    "status",
    "tenant",
    "district",
    "lat",
    "lon",
    "road",
    "road_km",
    "install",
    "cert_fingerprint",
    "oscore_kid",
    "psk_identity",
    "lot",
    "space",
)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _filters(
    offline: bool | None, profile: str | None, status: str | None, after_id: int
) -> tuple[str, list[Any]]:
    where: list[str] = ["d.id > %s"]
    params: list[Any] = [after_id]
    if offline is not None:
        where.append("v.online IS %s" % ("false" if offline else "true"))
    if profile:
        where.append("d.profile = %s")
        params.append(profile)
    if status:
        where.append("d.status = %s")
        params.append(status)
    return " AND ".join(where), params


def list_devices(
    conn: psycopg.Connection[Any],
    *,
    offline: bool | None = None,
    profile: str | None = None,
    status: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Devices in internal-id order after ``after_id``, filtered."""
    where, params = _filters(offline, profile, status, after_id)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"{_SELECT} WHERE {where} ORDER BY d.id LIMIT %s", [*params, limit])
        return [_jsonable(r) for r in cur.fetchall()]


def count_devices(
    conn: psycopg.Connection[Any],
    *,
    offline: bool | None = None,
    profile: str | None = None,
    status: str | None = None,
    after_id: int = 0,
) -> int:
    """How many devices ``list_devices`` would list without a limit."""
    where, params = _filters(offline, profile, status, after_id)
    join = " JOIN device_status_view v ON v.id = d.id" if offline is not None else ""
    row = conn.execute(f"SELECT count(*) FROM devices d{join} WHERE {where}", params).fetchone()
    return int(row[0]) if row else 0


def get_device(conn: psycopg.Connection[Any], ref: str) -> dict[str, Any] | None:
    """One device by external id (or ``#<internal id>``)."""
    with conn.cursor(row_factory=dict_row) as cur:
        if ref.startswith("#") and ref[1:].isdigit():
            cur.execute(f"{_SELECT} WHERE d.id = %s", [int(ref[1:])])
        else:
            cur.execute(f"{_SELECT} WHERE d.external_id = %s", [ref])
        row = cur.fetchone()
    if row is None:
        return None
    out = _jsonable(row)
    out["frames_24h"] = frames_24h(conn, int(row["id"]))
    return out


def frames_24h(conn: psycopg.Connection[Any], device_id: int) -> dict[str, Any]:
    """A device's numbered frames over the last 24 hourly counts (this hour and the 23
    before it): received, missing (net of late frames) and the loss ratio
    missing / (received + missing), None when it sent no numbered frame."""
    got = conn.execute(
        "SELECT COALESCE(sum(received), 0), GREATEST(COALESCE(sum(missing), 0), 0) "
        "FROM device_frame_counts WHERE device_id = %s "
        "AND hour >= date_trunc('hour', now()) - interval '23 hours'",
        [device_id],
    ).fetchone()
    received, missing = (int(got[0]), int(got[1])) if got else (0, 0)
    total = received + missing
    return {
        "received": received,
        "missing": missing,
        "loss_ratio": missing / total if total else None,
    }


def set_status(
    conn: psycopg.Connection[Any], ref: str, status: str, who: Principal
) -> dict[str, Any] | None:
    """Enable or disable a device, audited as ``who``; the running services pick it up from
    the change feed."""
    by_id = ref.startswith("#") and ref[1:].isdigit()  # as get_device reads a reference
    where = "id = %s" if by_id else "external_id = %s"
    key: object = int(ref[1:]) if by_id else ref
    with conn.transaction():
        cur = conn.execute(
            f"SELECT id, external_id, status FROM devices WHERE {where} FOR UPDATE", [key]
        ).fetchone()
        if cur is None:
            return None
        conn.execute("UPDATE devices SET status = %s WHERE id = %s", [status, cur[0]])
        action = "device.enable" if status == "active" else "device.disable"
        audit.record(conn, who, action, str(cur[1]), {"status": cur[2]}, {"status": status})
    return get_device(conn, ref)


def status_summary(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Per profile: devices, active, online, offline, never seen."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT COALESCE(profile, '') AS profile, count(*) AS devices, "
            "count(*) FILTER (WHERE status = 'active') AS active, "
            "count(*) FILTER (WHERE online) AS online, "
            "count(*) FILTER (WHERE online IS false) AS offline, "
            "count(*) FILTER (WHERE last_seen IS NULL) AS never_seen "
            "FROM device_status_view GROUP BY 1 ORDER BY 1"
        )
        return list(cur.fetchall())


def list_profiles(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every profile with its device count."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT p.name, p.kind, p.decoder, p.topic_pattern, p.coap_path, "
            "p.report_interval_s, p.offline_after, p.tables, p.rule_set, "
            "p.retention::text AS retention, p.compress_after::text AS compress_after, "
            "p.unknown_devices, p.description, "
            "(SELECT count(*) FROM devices d WHERE d.profile = p.name) AS devices "
            "FROM device_profiles p ORDER BY p.name"
        )
        return [_jsonable(r) for r in cur.fetchall()]


_BYTEA_FIELDS = ("oscore_kid", "oscore_secret", "oscore_salt", "psk_key")
SECRET_FIELDS = ("credential_hash", "oscore_secret", "oscore_salt", "psk_key")


def export_csv(conn: psycopg.Connection[Any], out: IO[bytes], secrets: bool = False) -> None:
    """Every device as CSV in the import format (re-importable), streamed. Credential hashes
    and OSCORE keys (hex, like the kid) are exported only with ``secrets``: a hash can be
    attacked offline, a key used at once. Without them a re-import keeps the stored ones, and
    only a device already holding its kid can be imported."""
    fields = (*EXPORT_FIELDS, *SECRET_FIELDS) if secrets else EXPORT_FIELDS
    cols = ", ".join(f"encode({c}, 'hex') AS {c}" if c in _BYTEA_FIELDS else c for c in fields)
    with (
        conn.cursor() as cur,
        cur.copy(
            f"COPY (SELECT {cols} FROM devices ORDER BY id) TO STDOUT (FORMAT csv, HEADER)"
        ) as copy,
    ):
        for block in copy:
            out.write(block)
