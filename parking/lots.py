"""Parking lots file (``cityflux parking import-lots``): read, validate, upsert.

CSV with a header naming ``lot`` and ``capacity`` (required) and any of ``name``,
``district``, ``lat``, ``lon``. A bad line is reported ``FILE:LINE: field: problem`` and the
good lines are imported; importing the same file again changes nothing.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

FIELDS = ("lot", "name", "capacity", "district", "lat", "lon")
MAX_LOT_BYTES = 64
MAX_TEXT = 256


class LotsFileError(ValueError):
    """A file that cannot be read at all (no such file, no header, an unknown column)."""


@dataclass(frozen=True, slots=True)
class Lot:
    """One parking lot: id, display name, number of spaces, district, position."""

    lot: str
    capacity: int
    name: str = ""
    district: str | None = None
    lat: float | None = None
    lon: float | None = None


def _number(field: str, text: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{field}: {text!r} is not a number") from None
    if math.isnan(value) or not lo <= value <= hi:
        raise ValueError(f"{field}: {value} is outside {lo}..{hi}")
    return value


def parse_line(row: dict[str, str]) -> Lot:
    """One validated lot, or ``ValueError('<field>: <problem>')``."""
    lot = row.get("lot", "").strip()
    if not lot:
        raise ValueError("lot: missing")
    if len(lot.encode()) > MAX_LOT_BYTES or any(c.isspace() or not c.isprintable() for c in lot):
        raise ValueError(f"lot: {lot!r}: 1-{MAX_LOT_BYTES} bytes, no spaces or control characters")
    text = row.get("capacity", "").strip()
    if not text.isdigit() or int(text) < 1 or int(text) > 1_000_000:
        raise ValueError(f"capacity: {text!r} is not a whole number of spaces 1..1000000")
    lat, lon = row.get("lat", "").strip(), row.get("lon", "").strip()
    if bool(lat) != bool(lon):
        raise ValueError(f"{'lat' if not lat else 'lon'}: lat and lon go together")
    for field in ("name", "district"):
        if len(row.get(field, "")) > MAX_TEXT:
            raise ValueError(f"{field}: longer than {MAX_TEXT} characters")
    return Lot(
        lot=lot,
        capacity=int(text),
        name=row.get("name", "").strip(),
        district=row.get("district", "").strip() or None,
        lat=_number("lat", lat, -90, 90) if lat else None,
        lon=_number("lon", lon, -180, 180) if lon else None,
    )


def read_lots(path: Path) -> tuple[list[Lot], list[str]]:
    """The file's valid lots (a lot named twice: its last line) and ``FILE:LINE: …`` errors."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise LotsFileError(f"{path}: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        unknown = [h for h in header if h not in FIELDS]
        if not header or unknown or "lot" not in header or "capacity" not in header:
            raise LotsFileError(
                f"{path}:1: header must name lot and capacity, and only {', '.join(FIELDS)}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            )
        lots: dict[str, Lot] = {}
        errors: list[str] = []
        for row in reader:
            try:
                lot = parse_line({k: v or "" for k, v in row.items() if k is not None})
            except ValueError as exc:
                errors.append(f"{path}:{reader.line_num}: {exc}")
                continue
            lots[lot.lot] = lot
    return list(lots.values()), errors


_UPSERT = """
INSERT INTO parking_lots (lot, name, capacity, district, lat, lon)
SELECT * FROM unnest(%s::text[], %s::text[], %s::int4[], %s::text[], %s::float8[], %s::float8[])
ON CONFLICT (lot) DO UPDATE SET name = EXCLUDED.name, capacity = EXCLUDED.capacity,
    district = EXCLUDED.district, lat = EXCLUDED.lat, lon = EXCLUDED.lon, updated_at = now()
WHERE (parking_lots.name, parking_lots.capacity, parking_lots.district, parking_lots.lat,
       parking_lots.lon)
      IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.capacity, EXCLUDED.district, EXCLUDED.lat,
                        EXCLUDED.lon)
"""


def upsert_lots(conn: psycopg.Connection[Any], lots: list[Lot]) -> int:
    """Insert or update lots by id in one statement; how many were new or changed."""
    if not lots:
        return 0
    cur = conn.execute(
        _UPSERT,
        (
            [x.lot for x in lots],
            [x.name for x in lots],
            [x.capacity for x in lots],
            [x.district for x in lots],
            [x.lat for x in lots],
            [x.lon for x in lots],
        ),
    )
    return cur.rowcount
