"""Bulk device import, writing side: validated columns into ``devices``, in one transaction.

The rows are reduced to the last line per device (numpy sort), the table is locked against
other writers (``SHARE ROW EXCLUSIVE``: readers go on), and the registry's ids are read the
way the service reads them to split new devices from known ones:

- new devices are sorted by external id, given a reserved range of internal ids and sent
  with one binary ``COPY`` built from the columns (no per-row defaults, identity or parse
  work left to the server). When they outnumber the devices already registered, the table's
  indexes are dropped first and rebuilt after the copy — from sorted input, which is the
  fastest way PostgreSQL builds a btree (PostgreSQL docs, "Populating a Database");
- known devices go through a temporary staging table and one ``UPDATE`` (an empty field
  keeps the stored value; unchanged rows are not rewritten).

Measured in bench/registry_scale.py (bench/README.md has the figures).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from decoders.base import Column, ColumnType
from device_registry.credentials import iterations_of, verify
from device_registry.devicerows import DeviceRows, ImportResult, LineError, Progress
from device_registry.index import UNKNOWN, DeviceIndex
from device_registry.resolver import INDEX_COPY, IndexBuilder
from storage.pgbinary import SIGNATURE, TRAILER, encode_rows, encode_stream

Conn = psycopg.Connection[tuple[object, ...]]
T = ColumnType
BULK_MIN_ROWS = 100_000  # below this, inserting into the live indexes is cheaper
INDEX_MEMORY = "1GB"  # maintenance_work_mem for the rebuild: 10M ids sort in memory (measured)
CHUNK_ROWS = 100_000
MAX_ID = 2**31 - 1

NEW_COLUMNS = (
    Column("id", T.INT4),
    Column("external_id", T.TEXT),
    Column("profile", T.TEXT, nullable=True),
    Column("kind", T.TEXT),
    Column("status", T.TEXT),
    Column("provisioned", T.TEXT),
    Column("created_at", T.TIMESTAMPTZ),
    Column("updated_at", T.TIMESTAMPTZ),
    Column("tenant", T.TEXT, nullable=True),
    Column("district", T.TEXT, nullable=True),
    Column("lat", T.FLOAT8, nullable=True),
    Column("lon", T.FLOAT8, nullable=True),
    Column("road", T.TEXT, nullable=True),
    Column("road_km", T.FLOAT8, nullable=True),
    Column("install", T.JSONB),
    Column("credential_hash", T.TEXT, nullable=True),
    Column("cert_fingerprint", T.TEXT, nullable=True),
    Column("oscore_kid", T.BYTEA, nullable=True),
    Column("oscore_secret", T.BYTEA, nullable=True),
    Column("oscore_salt", T.BYTEA, nullable=True),
    Column("psk_identity", T.TEXT, nullable=True),
    Column("psk_key", T.BYTEA, nullable=True),
    Column("lot", T.TEXT, nullable=True),
    Column("space", T.TEXT, nullable=True),
)
UPDATED_COLUMNS = (  # what an import may change on a known device
    *("profile", "kind", "status", "tenant", "district", "lat", "lon", "road", "road_km"),
    *("install", "credential_hash", "cert_fingerprint"),
    *("oscore_kid", "oscore_secret", "oscore_salt", "psk_identity", "psk_key", "lot", "space"),
)
STAGE_COLUMNS = (
    Column("line", T.INT8),
    Column("external_id", T.TEXT),
    *(Column(c.name, c.type, nullable=True) for c in NEW_COLUMNS if c.name in UPDATED_COLUMNS),
)
_STAGE = """
CREATE TEMP TABLE devices_import (
    line bigint, external_id text COLLATE "C", profile text, kind text, status text,
    tenant text, district text, lat float8, lon float8, road text, road_km float8,
    install jsonb, credential_hash text, cert_fingerprint text, oscore_kid bytea,
    oscore_secret bytea, oscore_salt bytea, psk_identity text, psk_key bytea, lot text,
    space text
) ON COMMIT DROP
"""
_UPDATE = f"""
UPDATE devices d SET {", ".join(f"{c} = COALESCE(s.{c}, d.{c})" for c in UPDATED_COLUMNS)},
    updated_at = now()
FROM devices_import s
WHERE d.external_id = s.external_id
  AND ({", ".join(f"d.{c}" for c in UPDATED_COLUMNS)})
      IS DISTINCT FROM ({", ".join(f"COALESCE(s.{c}, d.{c})" for c in UPDATED_COLUMNS)})
"""


class RegistryFullError(RuntimeError):
    """The import would need internal ids past the int4 range."""


def read_index(conn: Conn) -> DeviceIndex:
    """The registry's current ids, read and parsed as the service reads them."""
    builder = IndexBuilder()
    with conn.cursor() as cur, cur.copy(INDEX_COPY) as copy:
        for block in copy:
            builder.feed(block)
    return builder.index()


def last_per_device(rows: DeviceRows) -> tuple[DeviceRows, int]:
    """The last line of each device (a device named twice takes its last line), sorted by
    external id; and how many lines were superseded."""
    ext = rows.text["external_id"]
    order = np.lexsort((rows.lines, ext))
    ext = ext[order]
    last = np.ones(ext.shape[0], dtype=np.bool_)
    last[:-1] = ext[1:] != ext[:-1]
    return rows.take(order[last]), int((~last).sum())


def write_devices(
    conn: Conn,
    rows: DeviceRows,
    profiles: dict[str, str],
    result: ImportResult,
    progress: Progress | None = None,
) -> None:
    """Upsert ``rows`` (any order, devices may repeat: the last line wins) in one transaction;
    fill in ``result``'s counts. New devices are written sorted by external id."""
    rows, result.duplicates = last_per_device(rows)
    stream_devices(conn, [rows], profiles, result, len(rows), progress)


def stream_devices(
    conn: Conn,
    parts: Iterable[DeviceRows],
    profiles: dict[str, str],
    result: ImportResult,
    at_most: int,
    progress: Progress | None = None,
) -> None:
    """Upsert parts of rows in one transaction as they come, new devices by one binary COPY
    (``at_most`` bounds how many rows will come: their ids are reserved up front). Raises
    ``UniqueViolation`` (rolled back) if a new device comes twice."""
    with conn.transaction():
        conn.execute("LOCK TABLE devices IN SHARE ROW EXCLUSIVE MODE")
        known = read_index(conn)
        first, now = _reserve_ids(conn, at_most)
        bulk = at_most >= max(BULK_MIN_ROWS, len(known))
        rebuild = _drop_indexes(conn) if bulk else []
        old_parts: list[DeviceRows] = []
        new = 0
        with (
            conn.cursor() as cur,
            cur.copy(_copy_sql("devices", NEW_COLUMNS), writer=QueuedLibpqWriter(cur)) as copy,
        ):
            # the queued writer sends on its own thread: the next part is read meanwhile
            copy.write(SIGNATURE)
            for part in parts:
                exists = known.resolve(part.text["external_id"]) != UNKNOWN
                keep = _kid_without_secret(part, exists, result.errors)
                fresh = part.take(keep & ~exists)
                old_parts.append(part.take(keep & exists))
                for lo in range(0, len(fresh), CHUNK_ROWS):
                    chunk = fresh.take(np.arange(lo, min(len(fresh), lo + CHUNK_ROWS)))
                    data, nulls = _new_columns(chunk, profiles, first + new, now)
                    copy.write(
                        encode_rows(NEW_COLUMNS, data, nulls)[len(SIGNATURE) : -len(TRAILER)]
                    )
                    new += len(chunk)
            copy.write(TRAILER)
        # give back the ids not used (nobody else took any: they wait for our lock)
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('devices', 'id'), %s, false)", (first + new,)
        )
        result.inserted = new
        if rebuild:
            if progress:
                progress(new, new, f"indexing {len(known) + new:,} devices")
            conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(INDEX_MEMORY))
            for stmt in rebuild:
                conn.execute(stmt)
        old, dups = last_per_device(DeviceRows.concat(old_parts))
        result.duplicates += dups
        old = old.take(_kid_held(conn, old, result.errors))
        old = _keep_verified_hashes(conn, old)
        if len(old):
            conn.execute(_STAGE)
            _copy(conn, "devices_import", STAGE_COLUMNS, *_stage_columns(old))
            result.updated = conn.execute(_UPDATE).rowcount
            result.unchanged = len(old) - result.updated
        if new > 100_000:
            conn.execute("ANALYZE devices")
            # summarise the new block ranges, or change-feed reads scan them all until the
            # next autovacuum
            conn.execute("SELECT brin_summarize_new_values('devices_updated_at_brin')")


def _bare_kids(rows: DeviceRows) -> npt.NDArray[np.int64]:
    """Rows naming an ``oscore_kid`` without its ``oscore_secret``."""
    text = rows.text
    out: npt.NDArray[np.int64] = np.flatnonzero(
        (text["oscore_kid"] != b"") & (text["oscore_secret"] == b"")
    )
    return out


def _kid_without_secret(
    rows: DeviceRows, exists: npt.NDArray[np.bool_], errors: list[LineError]
) -> npt.NDArray[np.bool_]:
    """Which rows may be written: a new device's ``oscore_kid`` needs its ``oscore_secret``
    (a known device's is checked by ``_kid_held``); the others go to ``errors``."""
    keep = np.ones(len(rows), dtype=np.bool_)
    bare = _bare_kids(rows)
    for i in bare[~exists[bare]].tolist():
        errors.append(
            LineError(int(rows.lines[i]), "oscore_secret", "an oscore_kid needs its oscore_secret")
        )
        keep[i] = False
    return keep


def _kid_held(conn: Conn, rows: DeviceRows, errors: list[LineError]) -> npt.NDArray[np.bool_]:
    """Which rows of known devices may be written: an ``oscore_kid`` without its secret keeps
    the stored secret (an empty field keeps the stored value, so an export re-imports), which
    only works if the device holds that kid with a secret; the others go to ``errors``."""
    keep = np.ones(len(rows), dtype=np.bool_)
    bare = _bare_kids(rows)
    if bare.shape[0] == 0:
        return keep
    exts = [e.decode() for e in rows.text["external_id"][bare].tolist()]
    kids = [bytes.fromhex(k.decode()) for k in rows.text["oscore_kid"][bare].tolist()]
    held = {
        (str(ext), bytes(kid))  # type: ignore[call-overload]
        for ext, kid in conn.execute(
            "SELECT d.external_id, d.oscore_kid FROM devices d "
            "JOIN unnest(%s::text[], %s::bytea[]) AS s(ext, kid) "
            "ON d.external_id = s.ext AND d.oscore_kid = s.kid "
            "WHERE d.oscore_secret IS NOT NULL",
            (exts, kids),
        )
    }
    for i, ext, kid in zip(bare.tolist(), exts, kids, strict=True):
        if (ext, kid) not in held:
            errors.append(
                LineError(
                    int(rows.lines[i]),
                    "oscore_secret",
                    f"{ext} holds no oscore_kid {kid.hex()} with a secret; give its oscore_secret",
                )
            )
            keep[i] = False
    return keep


def _reserve_ids(conn: Conn, n: int) -> tuple[int, datetime]:
    """The first of ``n`` consecutive internal ids taken from the identity sequence, and the
    transaction's time (created_at/updated_at of new devices). Call under the table lock."""
    row = conn.execute("SELECT nextval(pg_get_serial_sequence('devices', 'id')), now()").fetchone()
    assert row is not None
    assert isinstance(row[1], datetime)
    first = int(str(row[0]))
    if first + n - 1 > MAX_ID:
        raise RegistryFullError(f"{n} new devices would need internal ids past {MAX_ID}")
    # other inserters wait for our lock, so nobody else can take ids from this range
    conn.execute("SELECT setval(pg_get_serial_sequence('devices', 'id'), %s)", (first + n - 1,))
    return first, row[1]


def _copy_sql(table: str, columns: tuple[Column, ...]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    )


def _keep_verified_hashes(conn: Conn, old: DeviceRows) -> DeviceRows:
    """Known devices given a secret keep their stored hash when the secret still verifies
    against it with the iterations asked for: each hash has a random salt, so hashing again
    would change every device on every import (and wake every service's change feed)."""
    secrets = old.text["secret"]
    given = np.flatnonzero(secrets != b"")
    if given.shape[0] == 0:
        return old
    ext = old.text["external_id"][given]
    rows = conn.execute(
        "SELECT external_id, credential_hash FROM devices "
        "WHERE external_id = ANY(%s) AND credential_hash IS NOT NULL",
        ([e.decode() for e in ext.tolist()],),
    ).fetchall()
    stored = {str(r[0]): str(r[1]) for r in rows}
    hashes = old.text["credential_hash"].tolist()
    for i, e in zip(given.tolist(), ext.tolist(), strict=True):
        have = stored.get(e.decode())
        new = hashes[i].decode()
        if (
            have is not None
            and iterations_of(have) == iterations_of(new)
            and verify(secrets[i].decode(), have)
        ):
            hashes[i] = have.encode()
    old.text["credential_hash"] = np.array(hashes, dtype=np.bytes_)
    return old


def _new_columns(
    new: DeviceRows, profiles: dict[str, str], first_id: int, now: datetime
) -> tuple[dict[str, npt.NDArray[np.generic]], dict[str, npt.NDArray[np.bool_]]]:
    n = len(new)
    t = new.text
    names = np.array(sorted(p.encode() for p in profiles), dtype=np.bytes_)
    kinds = np.array([profiles[p.decode()].encode() for p in names.tolist()] + [b"unknown"])
    at = np.searchsorted(names, t["profile"]) if names.shape[0] else np.zeros(n, np.int64)
    at = np.minimum(at, max(names.shape[0] - 1, 0))
    matched = names[at] == t["profile"] if names.shape[0] else np.zeros(n, bool)
    profile_kind = np.where(matched, kinds[at], kinds[-1])
    now_us = int((now - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6)
    data: dict[str, npt.NDArray[np.generic]] = {
        "id": np.arange(first_id, first_id + n, dtype=np.int32),
        "kind": np.where(t["kind"] != b"", t["kind"], profile_kind),
        "status": np.where(t["status"] != b"", t["status"], b"active"),
        "provisioned": np.full(n, b"import"),
        "created_at": np.full(n, now_us, dtype=np.int64),
        "updated_at": np.full(n, now_us, dtype=np.int64),
        "install": np.where(t["install"] != b"", t["install"], b"{}"),
    }
    nulls: dict[str, npt.NDArray[np.bool_]] = {}
    for c in NEW_COLUMNS:
        if c.name in data:
            continue
        if c.type is T.FLOAT8:
            data[c.name] = new.numbers[c.name]
            nulls[c.name] = np.isnan(new.numbers[c.name])
        elif c.type is T.BYTEA:
            data[c.name], nulls[c.name] = _hex_bytes(t[c.name])
        else:
            data[c.name] = t[c.name]
            if c.nullable:
                nulls[c.name] = t[c.name] == b""
    return data, nulls


def _stage_columns(
    old: DeviceRows,
) -> tuple[dict[str, npt.NDArray[np.generic]], dict[str, npt.NDArray[np.bool_]]]:
    data: dict[str, npt.NDArray[np.generic]] = {"line": old.lines}
    nulls: dict[str, npt.NDArray[np.bool_]] = {}
    for c in STAGE_COLUMNS[1:]:
        if c.type is T.FLOAT8:
            data[c.name] = old.numbers[c.name]
            nulls[c.name] = np.isnan(old.numbers[c.name])
        elif c.type is T.BYTEA:
            data[c.name], nulls[c.name] = _hex_bytes(old.text[c.name])
        else:
            data[c.name] = old.text[c.name]
            if c.name != "external_id":
                nulls[c.name] = old.text[c.name] == b""
    return data, nulls


def _hex_bytes(
    hexes: npt.NDArray[np.bytes_],
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.bool_]]:
    """Hex texts (validated) as an object array of bytes, and where they are empty."""
    empty = hexes == b""
    out = np.empty(hexes.shape[0], dtype=object)
    out[:] = [bytes.fromhex(h.decode()) if h else b"" for h in hexes.tolist()]
    return out, empty


def _copy(
    conn: Conn,
    table: str,
    columns: tuple[Column, ...],
    data: dict[str, npt.NDArray[np.generic]],
    nulls: dict[str, npt.NDArray[np.bool_]],
) -> None:
    with conn.cursor() as cur, cur.copy(_copy_sql(table, columns)) as copy:
        for chunk in encode_stream(columns, data, nulls, CHUNK_ROWS):
            copy.write(chunk)


def _drop_indexes(conn: Conn) -> list[str]:
    """Drop every index of ``devices`` (constraints too); return what recreates them."""
    cons = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'devices'::regclass AND contype IN ('p', 'u')"
    ).fetchall()
    idx = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = 'devices'::regclass AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
    ).fetchall()
    redo: list[str] = []
    for name, definition in cons:
        ident = sql.Identifier(str(name)).as_string(conn)
        conn.execute(f"ALTER TABLE devices DROP CONSTRAINT {ident}")
        redo.append(f"ALTER TABLE devices ADD CONSTRAINT {ident} {definition}")
    for name, definition in idx:
        conn.execute(f"DROP INDEX {name}")
        redo.append(str(definition))
    return redo
