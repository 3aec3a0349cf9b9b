"""Validated device lines as numpy columns: what the import reads and writes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from device_registry.csvscan import ScannedBlock

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
    "oscore_kid",
    "oscore_secret",
    "oscore_salt",
    "psk_identity",
    "psk_key",
    "lot",  # parking: the lot a space sensor is in (parking_lots.lot)
    "space",  # parking: the space's label within its lot
)
STORED = tuple(f for f in FIELDS if f != "secret")  # secret is stored as credential_hash
# what validation hands on: the stored fields, then the plain secret (never written: the
# upsert uses it only to keep a stored hash the secret still verifies, so that a re-import
# with per-device random salts is idempotent)
STAGED = (*STORED, "secret")
TEXT_FIELDS = tuple(f for f in STAGED if f not in ("lat", "lon", "road_km"))
NUMBER_FIELDS = ("lat", "lon", "road_km")


@dataclass(slots=True)
class LineError:
    """One invalid line: where, which field, what is wrong."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass(slots=True)
class DeviceRows:
    """Valid device lines as columns: text fields as UTF-8 bytes (``b""`` = not given),
    lat/lon/road_km as float64 (NaN = not given), and each row's line number."""

    lines: npt.NDArray[np.int64]
    text: dict[str, npt.NDArray[np.bytes_]]
    numbers: dict[str, npt.NDArray[np.float64]]

    def __len__(self) -> int:
        return int(self.lines.shape[0])

    def take(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.int64]) -> DeviceRows:
        """The rows selected by a mask or index array."""
        return DeviceRows(
            self.lines[keep],
            {k: v[keep] for k, v in self.text.items()},
            {k: v[keep] for k, v in self.numbers.items()},
        )

    @classmethod
    def concat(cls, parts: list[DeviceRows]) -> DeviceRows:
        """All parts' rows, in order."""
        if not parts:
            return cls.from_values([], [])
        return cls(
            np.concatenate([p.lines for p in parts]),
            {k: np.concatenate([p.text[k] for p in parts]) for k in TEXT_FIELDS},
            {k: np.concatenate([p.numbers[k] for p in parts]) for k in NUMBER_FIELDS},
        )

    @classmethod
    def from_values(cls, lines: list[int], rows: list[list[str]]) -> DeviceRows:
        """Rows validated in Python (``validate``'s output, ``STAGED`` order)."""
        cols = list(zip(*rows, strict=True)) if rows else [() for _ in STAGED]
        by_name = dict(zip(STAGED, cols, strict=True))
        return cls(
            np.array(lines, dtype=np.int64),
            {k: np.array([v.encode() for v in by_name[k]], dtype=np.bytes_) for k in TEXT_FIELDS},
            {
                k: np.array([float(v) if v else math.nan for v in by_name[k]], dtype=np.float64)
                for k in NUMBER_FIELDS
            },
        )

    @classmethod
    def from_scan(cls, block: ScannedBlock) -> DeviceRows:
        """The simple lines of a scanned CSV block (absent fields are empty)."""
        n = block.lines.shape[0]
        empty = np.zeros(n, dtype="S1")
        nan = np.full(n, math.nan)
        return cls(
            block.lines,
            {k: block.fields.get(k, empty) for k in TEXT_FIELDS},
            {k: block.numbers.get(k, nan) for k in NUMBER_FIELDS},
        )


Progress = Callable[[int, int, str], None]
"""Called with (done, total, what): bytes read, then rows written."""


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
