"""Ties decoded rows to registered devices, following the unknown-device policy."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
import psycopg

from device_registry.index import DISABLED, UNKNOWN, DeviceIndex

log = logging.getLogger(__name__)


class UnknownDevicePolicy(StrEnum):
    """What to do with a frame from a device the registry does not know."""

    REJECT = "reject"
    AUTO_PROVISION = "auto-provision"


@dataclass(slots=True)
class Resolution:
    """Internal ids per row (valid where ``ok``), and how many devices were provisioned."""

    ids: npt.NDArray[np.int32]
    ok: npt.NDArray[np.bool_]
    unknown: npt.NDArray[np.bool_]
    disabled: npt.NDArray[np.bool_]
    provisioned: int = 0


class DeviceResolver:
    """Holds the in-memory ``DeviceIndex`` and resolves batches against it.

    Contract: ``resolve`` never queries per frame; it queries only to auto-provision devices
    it has never seen (one INSERT per batch, idempotent). Connections are in autocommit mode.
    """

    def __init__(self, policy: UnknownDevicePolicy) -> None:
        self.policy = policy
        self.index = DeviceIndex()

    async def load(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
        """Load every device from the database into the index; return the count."""
        cur = await conn.execute("SELECT external_id, id, status = 'active' FROM devices")
        rows = await cur.fetchall()
        if rows:
            keys = np.array([r[0].encode() for r in rows], dtype=np.bytes_)  # type: ignore[attr-defined]
            ids = np.array([r[1] for r in rows], dtype=np.int32)
            active = np.array([r[2] for r in rows], dtype=np.bool_)
            self.index = DeviceIndex(keys, ids, active)
        log.info("device registry: %d devices loaded", len(rows))
        return len(rows)

    async def resolve(
        self,
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        devices: npt.NDArray[np.bytes_],
        kinds: npt.NDArray[np.bytes_],
    ) -> Resolution:
        """Resolve external ids; auto-provision unknown ones when the policy says so."""
        ids = self.index.resolve(devices)
        provisioned = 0
        if self.policy is UnknownDevicePolicy.AUTO_PROVISION and (ids == UNKNOWN).any():
            miss = ids == UNKNOWN
            new, first = np.unique(devices[miss], return_index=True)
            new_kinds = kinds[miss][first]
            cur = await conn.execute(
                "INSERT INTO devices (external_id, kind, provisioned) "
                "SELECT * , 'auto' FROM unnest(%s::text[], %s::text[]) "
                "ON CONFLICT (external_id) DO UPDATE SET updated_at = devices.updated_at "
                "RETURNING external_id, id, status = 'active', (xmax = 0)",
                ([k.decode() for k in new], [k.decode() or "unknown" for k in new_kinds]),
            )
            rows = await cur.fetchall()
            self.index.upsert(
                np.array([r[0].encode() for r in rows], dtype=np.bytes_),  # type: ignore[attr-defined]
                np.array([r[1] for r in rows], dtype=np.int32),
                np.array([r[2] for r in rows], dtype=np.bool_),
            )
            provisioned = sum(1 for r in rows if r[3])
            ids = self.index.resolve(devices)
        return Resolution(
            ids=ids,
            ok=ids >= 0,
            unknown=ids == UNKNOWN,
            disabled=ids == DISABLED,
            provisioned=provisioned,
        )
