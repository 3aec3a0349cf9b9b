"""In-memory, vectorised map from external device ids to internal ids.

External ids (bytes) are kept sorted in one numpy array; a batch resolves with one
``np.searchsorted`` and a comparison, never a query or a dict lookup per frame. Additions
(auto-provisioned or newly imported devices) go to a small sorted delta that is merged into
the main arrays when it grows past a fraction of them, so an addition costs O(delta).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

UNKNOWN = -1
DISABLED = -2

BytesArray = npt.NDArray[np.bytes_]
Int32Array = npt.NDArray[np.int32]


class _Sorted:
    __slots__ = ("active", "ids", "keys")

    def __init__(self, keys: BytesArray, ids: Int32Array, active: npt.NDArray[np.bool_]) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys, self.ids, self.active = keys[order], ids[order], active[order]

    def lookup(self, wanted: BytesArray) -> Int32Array:
        out = np.full(wanted.shape[0], UNKNOWN, dtype=np.int32)
        if self.keys.shape[0] == 0 or wanted.shape[0] == 0:
            return out
        pos = np.searchsorted(self.keys, wanted)
        pos_c = np.minimum(pos, self.keys.shape[0] - 1)
        hit = self.keys[pos_c] == wanted
        out[hit] = np.where(self.active[pos_c[hit]], self.ids[pos_c[hit]], DISABLED)
        return out


class DeviceIndex:
    """External id -> internal id (``UNKNOWN``/``DISABLED`` markers), resolved a batch at a time."""

    def __init__(
        self,
        keys: BytesArray | None = None,
        ids: Int32Array | None = None,
        active: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        keys = keys if keys is not None else np.empty(0, dtype="S1")
        ids = ids if ids is not None else np.empty(0, dtype=np.int32)
        active = active if active is not None else np.ones(ids.shape[0], dtype=np.bool_)
        self._main = _Sorted(keys, ids.astype(np.int32), active)
        self._delta = _Sorted(
            np.empty(0, dtype="S1"), np.empty(0, dtype=np.int32), np.empty(0, dtype=np.bool_)
        )

    def __len__(self) -> int:
        return int(self._main.keys.shape[0] + self._delta.keys.shape[0])

    def resolve(self, devices: BytesArray) -> Int32Array:
        """Internal id per external id; ``UNKNOWN`` (-1) or ``DISABLED`` (-2) otherwise."""
        out = self._delta.lookup(devices)
        miss = out == UNKNOWN
        if miss.any():
            out[miss] = self._main.lookup(devices[miss])
        return out

    def upsert(self, keys: BytesArray, ids: Int32Array, active: npt.NDArray[np.bool_]) -> None:
        """Add or replace entries (later entries win over earlier ones)."""
        keys = np.concatenate([self._delta.keys.astype(np.bytes_), keys.astype(np.bytes_)])
        ids = np.concatenate([self._delta.ids, ids.astype(np.int32)])
        active = np.concatenate([self._delta.active, active])
        # keep the last occurrence of each key
        _, last = np.unique(keys[::-1], return_index=True)
        last = keys.shape[0] - 1 - last
        self._delta = _Sorted(keys[last], ids[last], active[last])
        if self._delta.keys.shape[0] > max(1024, self._main.keys.shape[0] // 16):
            self._merge()

    def _merge(self) -> None:
        drop = np.isin(self._main.keys, self._delta.keys)
        keep = ~drop
        self._main = _Sorted(
            np.concatenate([self._main.keys[keep].astype(np.bytes_), self._delta.keys]),
            np.concatenate([self._main.ids[keep], self._delta.ids]),
            np.concatenate([self._main.active[keep], self._delta.active]),
        )
        self._delta = _Sorted(
            np.empty(0, dtype="S1"), np.empty(0, dtype=np.int32), np.empty(0, dtype=np.bool_)
        )
