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
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from device_registry.credentials import CredentialError, check_hash, device_salt, hash_secret

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


def validate(row: dict[str, str], profiles: frozenset[str]) -> list[str]:
    """The staged values of one device line (``""`` = not given), or ``_InvalidFieldError``."""
    ext = row.get("external_id", "")
    if not ext:
        raise _InvalidFieldError("external_id", "missing")
    if not _ID.fullmatch(ext) or len(ext.encode()) > 64:
        raise _InvalidFieldError(
            "external_id",
            f"{ext!r}: 1-64 bytes without spaces, control characters, '/', '+', '#', ':' or '\\'",
        )
    profile = row.get("profile", "")
    if profile and profile not in profiles:
        raise _InvalidFieldError("profile", f"unknown profile {profile!r}")
    status = row.get("status", "")
    if status and status not in ("active", "disabled"):
        raise _InvalidFieldError("status", f"{status!r} is not active or disabled")
    for name in ("kind", "tenant", "district", "road"):
        if len(row.get(name, "")) > _TEXT_MAX:
            raise _InvalidFieldError(name, f"longer than {_TEXT_MAX} characters")
    lat, lon = row.get("lat", ""), row.get("lon", "")
    if bool(lat) != bool(lon):
        raise _InvalidFieldError("lat" if not lat else "lon", "lat and lon go together")
    if lat:
        _float("lat", lat, -90, 90)
        _float("lon", lon, -180, 180)
    road_km = row.get("road_km", "")
    if road_km:
        _float("road_km", road_km, 0, 1e6)
    install = row.get("install", "")
    if install:
        try:
            doc = json.loads(install)
        except ValueError:
            raise _InvalidFieldError("install", "not valid JSON") from None
        if not isinstance(doc, dict):
            raise _InvalidFieldError("install", "must be a JSON object")
    secret, hashed = row.get("secret", ""), row.get("credential_hash", "")
    if secret and hashed:
        raise _InvalidFieldError("secret", "give a secret or a credential_hash, not both")
    if secret:
        if len(secret) < 8:
            raise _InvalidFieldError("secret", "shorter than 8 characters")
        hashed = hash_secret(secret, device_salt(ext))
    elif hashed:
        try:
            check_hash(hashed)
        except CredentialError as exc:
            raise _InvalidFieldError("credential_hash", str(exc)) from None
    cert = row.get("cert_fingerprint", "").replace(":", "").lower()
    if cert and not _HEX64.fullmatch(cert):
        raise _InvalidFieldError(
            "cert_fingerprint", "must be a SHA-256 fingerprint (64 hex digits)"
        )
    return [
        ext,
        profile,
        row.get("kind", ""),
        status,
        row.get("tenant", ""),
        row.get("district", ""),
        lat,
        lon,
        row.get("road", ""),
        road_km,
        install,
        hashed,
        cert,
    ]


def _csv_rows(fh: io.TextIOBase, name: str) -> Iterator[tuple[int, dict[str, str] | str]]:
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
    for values in reader:
        line = reader.line_num
        if len(values) != width:
            yield line, f"{len(values)} fields, the header has {width}"
        else:
            yield line, dict(zip(header, values, strict=True))


def _jsonl_rows(fh: io.TextIOBase, name: str) -> Iterator[tuple[int, dict[str, str] | str]]:
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
        row = {}
        for k, v in doc.items():
            if v is None:
                continue
            row[k] = json.dumps(v) if k == "install" else str(v)
        yield line, row


def read_rows(path: Path, fh: io.TextIOBase) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line number, row or the reason it cannot be read) for every device line of a file."""
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


def import_devices(
    conn: psycopg.Connection[tuple[object, ...]],
    path: Path,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Validate ``path`` and upsert its valid devices in one transaction.

    ``progress`` is called with the number of bytes read so far.
    """
    cur = conn.execute("SELECT name FROM device_profiles")
    profiles = frozenset(str(r[0]) for r in cur.fetchall())
    result = ImportResult()
    with (
        conn.transaction(),
        path.open("rb") as raw,
        io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh,
    ):
        conn.execute(_STAGE)
        staged = 0
        with conn.cursor().copy(
            "COPY devices_import (line, external_id, profile, kind, status, tenant, district, "
            "lat, lon, road, road_km, install, credential_hash, cert_fingerprint) "
            "FROM STDIN (FORMAT csv)"
        ) as copy:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            rows = 0
            for line, row in read_rows(path, fh):
                result.lines += 1
                if isinstance(row, str):
                    result.errors.append(LineError(line, "line", row))
                    continue
                try:
                    values = validate(row, profiles)
                except _InvalidFieldError as exc:
                    result.errors.append(LineError(line, exc.field, str(exc)))
                    continue
                writer.writerow([line, *values])
                rows += 1
                if rows == _CHUNK_ROWS:
                    copy.write(out.getvalue())
                    out.seek(0)
                    out.truncate()
                    staged += rows
                    rows = 0
                    if progress:
                        progress(raw.tell())
            copy.write(out.getvalue())
            staged += rows
        if progress:
            progress(path.stat().st_size)
        result.duplicates = conn.execute(_DEDUPE).rowcount
        result.updated = conn.execute(_UPDATE).rowcount
        result.inserted = conn.execute(_INSERT).rowcount
        if result.inserted > 100_000:
            conn.execute("ANALYZE devices")
    result.unchanged = staged - result.duplicates - result.updated - result.inserted
    return result
