"""Registry attributes the rules read (``device_lat``, ``device_road_km``, ``install_<key>``…),
fetched for the devices that actually appear in rule rows, and kept in sorted arrays.

In the service the cache fills on demand: before a batch is evaluated, the ids it has not
seen are read with one query (``ensure``), and ids the registry's change feed reports as
changed are forgotten. Offline (``cityflux rules test --devices FILE``) the attributes come
from a devices file in the import format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bytes = npt.NDArray[np.bytes_]

TEXT = ("external_id", "kind", "profile", "district", "road")
NUMBERS = ("lat", "lon", "road_km", "offline_after_s")

_QUERY = """
SELECT d.id, d.external_id, d.kind, d.profile, d.district, d.road, d.lat, d.lon, d.road_km,
       CASE  -- an LwM2M device is offline when its registration lapses (0010_lwm2m.sql)
           WHEN r.device_id IS NULL THEN p.report_interval_s * p.offline_after
           WHEN r.deregistered_at IS NULL THEN r.lifetime_s
       END AS offline_after_s,
       p.report_interval_s, d.install
FROM devices d LEFT JOIN device_profiles p ON p.name = d.profile
LEFT JOIN lwm2m_registrations r ON r.device_id = d.id
WHERE d.id = ANY(%s)
"""


class DeviceAttributes:
    """Attributes by internal device id; missing numbers are NaN, missing texts ``b""``."""

    def __init__(self, install_keys: Iterable[str] = ()) -> None:
        self.install_keys = tuple(install_keys)
        self.ids = np.empty(0, dtype=np.int64)
        self.text: dict[str, Bytes] = {k: np.empty(0, dtype="S1") for k in TEXT}
        self.numbers: dict[str, F64] = {
            k: np.empty(0) for k in (*NUMBERS, "report_interval_s", *self._install_cols())
        }

    def _install_cols(self) -> list[str]:
        return [f"install_{k}" for k in self.install_keys]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def _positions(self, ids: I64) -> tuple[I64, npt.NDArray[np.bool_]]:
        if self.ids.shape[0] == 0:
            return np.zeros(ids.shape[0], dtype=np.int64), np.zeros(ids.shape[0], dtype=bool)
        at = np.minimum(np.searchsorted(self.ids, ids), self.ids.shape[0] - 1)
        return at, self.ids[at] == ids

    def missing(self, ids: I64) -> I64:
        """The ids (unique) not cached yet."""
        uniq = np.unique(ids)
        _, hit = self._positions(uniq)
        out: I64 = uniq[~hit]
        return out

    def number(self, name: str, ids: I64) -> F64:
        """A numeric attribute per id (NaN when unknown)."""
        at, hit = self._positions(ids)
        col = self.numbers.get(name)
        out = np.full(ids.shape[0], np.nan)
        if col is not None and col.shape[0]:
            out[hit] = col[at[hit]]
        return out

    def texts(self, name: str, ids: I64) -> Bytes:
        """A text attribute per id (``b""`` when unknown)."""
        at, hit = self._positions(ids)
        col = self.text[name]
        if col.shape[0] == 0:
            return np.zeros(ids.shape[0], dtype="S1")
        out: Bytes = np.where(hit, col[at], b"").astype(col.dtype)
        return out

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Cache these devices (each a dict of the attribute names and ``id``)."""
        if not rows:
            return
        new_ids = np.array([int(r["id"]) for r in rows], dtype=np.int64)
        keep = ~np.isin(self.ids, new_ids)
        ids = np.concatenate([self.ids[keep], new_ids])
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        for k in TEXT:
            vals = np.array([(r.get(k) or "").encode() for r in rows], dtype=np.bytes_)
            merged = np.concatenate([self.text[k][keep].astype(np.bytes_), vals])
            self.text[k] = merged[order]
        for k in self.numbers:
            vals = np.array([_num(r.get(k)) for r in rows], dtype=np.float64)
            self.numbers[k] = np.concatenate([self.numbers[k][keep], vals])[order]

    def forget(self, ids: I64) -> None:
        """Drop cached devices (they changed in the registry)."""
        keep = ~np.isin(self.ids, ids)
        self.ids = self.ids[keep]
        for k in TEXT:
            self.text[k] = self.text[k][keep]
        for k in self.numbers:
            self.numbers[k] = self.numbers[k][keep]

    def forget_changed(self, ids: I64 | None) -> None:
        """The registry's change feed: these devices changed (None: any may have)."""
        if ids is None:
            self.forget(self.ids.copy())
        elif ids.shape[0]:
            self.forget(ids)

    async def ensure(self, conn: psycopg.AsyncConnection[Any], ids: I64) -> int:
        """Fetch the attributes of the ids not cached yet; return how many were fetched."""
        miss = self.missing(ids)
        if miss.shape[0] == 0:
            return 0
        cur = await conn.execute(_QUERY, (miss.tolist(),))
        rows = [self._row(r) for r in await cur.fetchall()]
        found = {int(r["id"]) for r in rows}
        # ids the registry does not have (any more): remember them as empty
        rows += [{"id": i} for i in miss.tolist() if i not in found]
        self.add(rows)
        return len(rows)

    def _row(self, r: tuple[Any, ...]) -> dict[str, Any]:
        (id_, ext, kind, profile, district, road, lat, lon, road_km, off, interval, inst) = r
        row: dict[str, Any] = {
            "id": id_,
            "external_id": ext,
            "kind": kind,
            "profile": profile,
            "district": district,
            "road": road,
            "lat": lat,
            "lon": lon,
            "road_km": road_km,
            "offline_after_s": off,
            "report_interval_s": interval,
        }
        install = inst if isinstance(inst, dict) else {}
        for k in self.install_keys:
            row[f"install_{k}"] = install.get(k)
        return row

    def load_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Cache devices given as import-format dicts (``install`` may be JSON text)."""
        out = []
        for r in rows:
            install = r.get("install") or {}
            if isinstance(install, str):
                install = json.loads(install) if install else {}
            row = dict(r)
            for k in self.install_keys:
                row[f"install_{k}"] = install.get(k) if isinstance(install, dict) else None
            out.append(row)
        self.add(out)


def _num(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
