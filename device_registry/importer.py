"""Bulk device import: CSV or JSON Lines, validated line by line, upserted in one transaction.

Each line is checked in Python (cheap checks, no model object per line) and streamed as CSV
into a temporary staging table with ``COPY``; PostgreSQL then updates the devices that exist
and inserts the rest. Invalid lines are reported with their line number and field and left
out; the rest is imported. Re-importing a file changes nothing (idempotent upsert). An empty
field keeps the stored value; a device named twice in one file takes its last line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import psycopg
import psycopg.errors

from device_registry.credentials import CredentialError, check_hash, device_salt, hash_secret
from device_registry.index import UNKNOWN, DeviceIndex
from device_registry.resolver import INDEX_COPY, IndexBuilder

FIELDS = (
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
    "secret",
    "credential_hash",
    "cert_fingerprint",
)
STORED = tuple(f for f in FIELDS if f != "secret")  # secret is stored as credential_hash
_ID = re.compile(r"[^\s/+#:\\\x00-\x1f\x7f]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TEXT_MAX = 128
_CHUNK_ROWS = 20_000


class ImportFormatError(ValueError):
    """A file whose header or format cannot be imported at all."""


@dataclass(slots=True)
class LineError:
    """One invalid line: where, which field, what is wrong."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass(slots=True)
class ImportResult:
    """What an import did."""

    lines: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    errors: list[LineError] = field(default_factory=list)

    @property
    def imported(self) -> int:
        """Valid device lines (inserted, updated or already up to date)."""
        return self.inserted + self.updated + self.unchanged


class _InvalidFieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _float(name: str, text: str, lo: float, hi: float) -> str:
    try:
        value = float(text)
    except ValueError:
        raise _InvalidFieldError(name, f"{text!r} is not a number") from None
    if not (lo <= value <= hi) or math.isnan(value):
        raise _InvalidFieldError(name, f"{value} is outside {lo}..{hi}")
    return text


def validate(v: list[str], profiles: frozenset[str] | dict[str, str]) -> list[str]:
    """The staged values (``STORED`` order, ``""`` = not given) of one device line given in
    ``FIELDS`` order, or ``_InvalidFieldError`` naming the field."""
    ext, profile, kind, status, tenant, district, lat, lon, road, road_km = v[:10]
    install, secret, hashed, cert = v[10:]
    if not ext:
        raise _InvalidFieldError("external_id", "missing")
    if not _ID.fullmatch(ext) or len(ext.encode()) > 64:
        raise _InvalidFieldError(
            "external_id",
            f"{ext!r}: 1-64 bytes without spaces, control characters, '/', '+', '#', ':' or '\\'",
        )
    if profile and profile not in profiles:
        raise _InvalidFieldError("profile", f"unknown profile {profile!r}")
    if status and status not in ("active", "disabled"):
        raise _InvalidFieldError("status", f"{status!r} is not active or disabled")
    if (
        len(kind) > _TEXT_MAX
        or len(tenant) > _TEXT_MAX
        or len(district) > _TEXT_MAX
        or len(road) > _TEXT_MAX
    ):
        name = next(
            n
            for n, x in zip(
                ("kind", "tenant", "district", "road"), (kind, tenant, district, road), strict=True
            )
            if len(x) > _TEXT_MAX
        )
        raise _InvalidFieldError(name, f"longer than {_TEXT_MAX} characters")
    if lat or lon:
        if not (lat and lon):
            raise _InvalidFieldError("lat" if not lat else "lon", "lat and lon go together")
        _float("lat", lat, -90, 90)
        _float("lon", lon, -180, 180)
    if road_km:
        _float("road_km", road_km, 0, 1e6)
    if install:
        try:
            doc = json.loads(install)
        except ValueError:
            raise _InvalidFieldError("install", "not valid JSON") from None
        if not isinstance(doc, dict):
            raise _InvalidFieldError("install", "must be a JSON object")
    if secret:
        if hashed:
            raise _InvalidFieldError("secret", "give a secret or a credential_hash, not both")
        if len(secret) < 8:
            raise _InvalidFieldError("secret", "shorter than 8 characters")
        hashed = hash_secret(secret, device_salt(ext))
    elif hashed:
        try:
            check_hash(hashed)
        except CredentialError as exc:
            raise _InvalidFieldError("credential_hash", str(exc)) from None
    if cert:
        cert = cert.replace(":", "").lower()
        if not _HEX64.fullmatch(cert):
            raise _InvalidFieldError(
                "cert_fingerprint", "must be a SHA-256 fingerprint (64 hex digits)"
            )
    return [
        ext,
        profile,
        kind,
        status,
        tenant,
        district,
        lat,
        lon,
        road,
        road_km,
        install,
        hashed,
        cert,
    ]


def _csv_rows(fh: io.TextIOBase, name: str) -> Iterator[tuple[int, list[str] | str]]:
    reader = csv.reader(fh)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return
    unknown = [h for h in header if h not in FIELDS]
    if unknown or "external_id" not in header:
        raise ImportFormatError(
            f"{name}: line 1: header must name external_id and only known fields "
            f"({', '.join(FIELDS)}); unknown: {', '.join(unknown) or '-'}"
        )
    width = len(header)
    if header == list(FIELDS):
        for values in reader:
            if len(values) != width:
                yield reader.line_num, f"{len(values)} fields, the header has {width}"
            else:
                yield reader.line_num, values
        return
    pick = operator.itemgetter(*[header.index(f) if f in header else width for f in FIELDS])
    for values in reader:  # a missing field reads the "" appended at position ``width``
        if len(values) != width:
            yield reader.line_num, f"{len(values)} fields, the header has {width}"
        else:
            values.append("")
            yield reader.line_num, list(pick(values))


def _jsonl_rows(fh: io.TextIOBase, name: str) -> Iterator[tuple[int, list[str] | str]]:
    del name
    for line, text in enumerate(fh, start=1):
        if not text.strip():
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line, f"not valid JSON ({exc.msg})"
            continue
        if not isinstance(doc, dict):
            yield line, "not a JSON object"
            continue
        unknown = [k for k in doc if k not in FIELDS]
        if unknown:
            yield line, f"unknown field(s) {', '.join(unknown)}"
            continue
        yield (
            line,
            [
                "" if doc.get(k) is None else json.dumps(doc[k]) if k == "install" else str(doc[k])
                for k in FIELDS
            ],
        )


def read_rows(path: Path, fh: io.TextIOBase) -> Iterator[tuple[int, list[str] | str]]:
    """(line number, values in ``FIELDS`` order or the reason the line cannot be read) for
    every device line of a file."""
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        return _jsonl_rows(fh, str(path))
    return _csv_rows(fh, str(path))


_STAGE = """
CREATE TEMP TABLE devices_import (
    line bigint, external_id text COLLATE "C", profile text, kind text, status text,
    tenant text, district text, lat float8, lon float8, road text, road_km float8,
    install jsonb, credential_hash text, cert_fingerprint text
) ON COMMIT DROP
"""
_DEDUPE = """
DELETE FROM devices_import a USING devices_import b
WHERE a.external_id = b.external_id AND a.line < b.line
"""
_KEPT = ("profile", "kind", "status", "tenant", "district", "lat", "lon", "road", "road_km")
_ALL = (*_KEPT, "install", "credential_hash", "cert_fingerprint")
_UPDATE = f"""
UPDATE devices d SET {", ".join(f"{c} = COALESCE(s.{c}, d.{c})" for c in _ALL)},
    updated_at = now()
FROM devices_import s
WHERE d.external_id = s.external_id
  AND ({", ".join(f"d.{c}" for c in _ALL)})
      IS DISTINCT FROM ({", ".join(f"COALESCE(s.{c}, d.{c})" for c in _ALL)})
"""
_INSERT = """
INSERT INTO devices (external_id, profile, kind, status, tenant, district, lat, lon, road,
                     road_km, install, credential_hash, cert_fingerprint)
SELECT s.external_id, s.profile, COALESCE(s.kind, p.kind, 'unknown'), COALESCE(s.status, 'active'),
       s.tenant, s.district, s.lat, s.lon, s.road, s.road_km, COALESCE(s.install, '{}'),
       s.credential_hash, s.cert_fingerprint
FROM devices_import s
LEFT JOIN device_profiles p ON p.name = s.profile
WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.external_id = s.external_id)
"""


_DIRECT = (
    "COPY devices (external_id, profile, kind, status, tenant, district, lat, lon, road, "
    "road_km, install, credential_hash, cert_fingerprint) FROM STDIN (FORMAT csv)"
)
_STAGED = (
    "COPY devices_import (line, external_id, profile, kind, status, tenant, district, "
    "lat, lon, road, road_km, install, credential_hash, cert_fingerprint) FROM STDIN (FORMAT csv)"
)


def import_devices(
    conn: psycopg.Connection[tuple[object, ...]],
    path: Path,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Validate ``path`` and upsert its valid devices in one transaction.

    Devices the registry does not have yet are copied straight into ``devices`` (checked
    against the registry's ids, read the way the service reads them); the others go through
    a staging table and one UPDATE. If the direct copy meets a unique violation (a device
    named twice in the file, or added concurrently), the import is redone entirely through
    the staging table. ``progress`` is called with the number of bytes read so far.
    """
    cur = conn.execute("SELECT name, kind FROM device_profiles")
    profiles = {str(name): str(kind) for name, kind in cur.fetchall()}
    known = read_index(conn)
    try:
        return _import(conn, path, profiles, known, progress)
    except psycopg.errors.UniqueViolation:
        return _import(conn, path, profiles, None, progress)


def _import(
    conn: psycopg.Connection[tuple[object, ...]],
    path: Path,
    profiles: dict[str, str],
    known: DeviceIndex | None,
    progress: Callable[[int], None] | None,
) -> ImportResult:
    result = ImportResult()
    with (
        conn.transaction(),
        path.open("rb") as raw,
        io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh,
        tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as spool,
    ):
        staged = csv.writer(spool, lineterminator="\n")
        out = io.StringIO()
        direct = csv.writer(out, lineterminator="\n")
        lines: list[int] = []
        rows: list[list[str]] = []

        def flush(copy: psycopg.Copy | None) -> None:
            if not rows:
                return
            if known is None or copy is None:
                new = np.zeros(len(rows), dtype=np.bool_)
            else:
                ids = np.array([r[0].encode() for r in rows], dtype=np.bytes_)
                new = known.resolve(ids) == UNKNOWN
            for line, row, is_new in zip(lines, rows, new.tolist(), strict=True):
                if is_new:
                    if not row[2]:
                        row[2] = profiles.get(row[1], "unknown")
                    row[3] = row[3] or "active"
                    row[10] = row[10] or "{}"
                    direct.writerow(row)
                    result.inserted += 1
                else:
                    staged.writerow([line, *row])
            if copy is not None and out.tell():
                copy.write(out.getvalue())
                out.seek(0)
                out.truncate()
            lines.clear()
            rows.clear()
            if progress:
                progress(raw.tell())

        with conn.cursor().copy(_DIRECT) as copy:
            for line, values in read_rows(path, fh):
                result.lines += 1
                if isinstance(values, str):
                    result.errors.append(LineError(line, "line", values))
                    continue
                try:
                    rows.append(validate(values, profiles))
                except _InvalidFieldError as exc:
                    result.errors.append(LineError(line, exc.field, str(exc)))
                    continue
                lines.append(line)
                if len(rows) == _CHUNK_ROWS:
                    flush(copy)
            flush(copy)
        if progress:
            progress(path.stat().st_size)
        if spool.tell():
            staged_rows = _stage(conn, spool)
            result.duplicates = conn.execute(_DEDUPE).rowcount
            result.updated = conn.execute(_UPDATE).rowcount
            late = conn.execute(_INSERT).rowcount  # new devices of the careful path
            result.inserted += late
            result.unchanged = staged_rows - result.duplicates - result.updated - late
        if result.inserted > 100_000:
            conn.execute("ANALYZE devices")
            # summarise the new block ranges, or change-feed reads scan them all until the
            # next autovacuum
            conn.execute("SELECT brin_summarize_new_values('devices_updated_at_brin')")
    return result


def _stage(conn: psycopg.Connection[tuple[object, ...]], spool: IO[str]) -> int:
    """Load the spooled rows into the staging table; return how many."""
    conn.execute(_STAGE)
    spool.seek(0)
    n = 0
    with conn.cursor().copy(_STAGED) as copy:
        while block := spool.read(1 << 20):
            copy.write(block)
            n += block.count("\n")
    return n


def read_index(conn: psycopg.Connection[tuple[object, ...]]) -> DeviceIndex:
    """The registry's current ids, read and parsed as the service reads them."""
    builder = IndexBuilder()
    with conn.cursor() as cur, cur.copy(INDEX_COPY) as copy:
        for block in copy:
            builder.feed(block)
    return builder.index()
