"""In-memory, vectorised map from external device ids to internal ids, sized for 10M devices.

Each external id (bytes, ≤ 64) is hashed to 64 bits; the index keeps the hashes sorted with
the ids, internal ids and active flags in the same order. A batch resolves with one
``np.searchsorted`` over integers and one comparison of the candidate ids (so a hash
collision can never map a frame to the wrong device), never a query or a dict lookup per
frame. Additions (auto-provisioned or newly imported devices) go to a small sorted delta
that is merged into the main arrays when it grows past a fraction of them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

UNKNOWN = -1
DISABLED = -2

BytesArray = npt.NDArray[np.bytes_]
Int32Array = npt.NDArray[np.int32]
U64Array = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]

_SEED = np.uint64(0x243F6A8885A308D3)
_CHUNK = 1 << 20
_DEDUPE_ABOVE = 1024  # rows in a batch
_BIG_INDEX = 1 << 17  # below this the whole index stays in cache: searching is cheaper


def _mix(x: U64Array) -> U64Array:
    """The splitmix64 finaliser (a public-domain bijective mixer)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_ids(keys: BytesArray) -> U64Array:
    """A 64-bit hash of every external id, the same whatever the array's width (8-byte lanes
    that are all NUL are padding and skipped)."""
    n = keys.shape[0]
    out = np.empty(n, dtype=np.uint64)
    width = max(keys.dtype.itemsize, 1)
    words = -(-width // 8)
    for lo in range(0, n, _CHUNK):
        part = np.ascontiguousarray(keys[lo : lo + _CHUNK]).view(np.uint8).reshape(-1, width)
        padded = np.zeros((part.shape[0], words * 8), dtype=np.uint8)
        padded[:, :width] = part
        lanes = padded.view("<u8")
        h = np.full(part.shape[0], _SEED, dtype=np.uint64)
        for j in range(words):  # all-zero lanes are padding: the hash ignores the width
            lane = lanes[:, j]
            h = np.where(lane != 0, _mix(h ^ lane), h)
        out[lo : lo + _CHUNK] = h
    return out


class _Sorted:
    __slots__ = ("active", "hashes", "ids", "keys", "run")

    def __init__(self, keys: BytesArray, ids: Int32Array, active: BoolArray) -> None:
        hashes = hash_ids(keys)
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.keys, self.ids, self.active = keys[order], ids[order], active[order]
        # the longest run of equal hashes (1 unless two ids collide): how far lookups probe
        if self.hashes.shape[0] > 1:
            starts = np.flatnonzero(np.diff(self.hashes)) + 1
            bounds = np.concatenate([[0], starts, [self.hashes.shape[0]]])
            self.run = int(np.diff(bounds).max())
        else:
            self.run = 1

    @classmethod
    def empty(cls) -> _Sorted:
        return cls(np.empty(0, dtype="S1"), np.empty(0, dtype=np.int32), np.empty(0, dtype=bool))

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    def positions(self, wanted: BytesArray, hashes: U64Array) -> npt.NDArray[np.int64]:
        """Where each wanted id is in these arrays, or -1."""
        out = np.full(wanted.shape[0], -1, dtype=np.int64)
        n = self.hashes.shape[0]
        if n == 0 or wanted.shape[0] == 0:
            return out
        # searching in sorted order keeps successive searches on the same cache lines
        order = np.argsort(hashes)
        first = np.empty(order.shape[0], dtype=np.int64)
        first[order] = np.searchsorted(self.hashes, hashes[order])
        pending = np.arange(wanted.shape[0])
        for step in range(self.run):
            at = np.minimum(first[pending] + step, n - 1)
            same = self.hashes[at] == hashes[pending]
            hit = same & (self.keys[at] == wanted[pending])
            out[pending[hit]] = at[hit]
            pending = pending[same & ~hit]
            if pending.shape[0] == 0:
                break
        return out

    def lookup(self, wanted: BytesArray, hashes: U64Array) -> Int32Array:
        """Internal ids (``UNKNOWN``/``DISABLED`` markers) of the wanted ids."""
        pos = self.positions(wanted, hashes)
        out = np.full(wanted.shape[0], UNKNOWN, dtype=np.int32)
        hit = pos >= 0
        got = pos[hit]
        out[hit] = np.where(self.active[got], self.ids[got], DISABLED)
        return out


class DeviceIndex:
    """External id -> internal id (``UNKNOWN``/``DISABLED`` markers), resolved a batch at a time."""

    def __init__(
        self,
        keys: BytesArray | None = None,
        ids: Int32Array | None = None,
        active: BoolArray | None = None,
    ) -> None:
        keys = keys if keys is not None else np.empty(0, dtype="S1")
        ids = ids if ids is not None else np.empty(0, dtype=np.int32)
        active = active if active is not None else np.ones(ids.shape[0], dtype=np.bool_)
        self._main = _Sorted(keys, ids.astype(np.int32), active)
        self._delta = _Sorted.empty()

    def __len__(self) -> int:
        return len(self._main) + len(self._delta)

    @property
    def nbytes(self) -> int:
        """Memory held by the index arrays."""
        return sum(
            getattr(t, a).nbytes
            for t in (self._main, self._delta)
            for a in ("hashes", "keys", "ids", "active")
        )

    def resolve(self, devices: BytesArray) -> Int32Array:
        """Internal id per external id; ``UNKNOWN`` (-1) or ``DISABLED`` (-2) otherwise.

        Rows repeat devices (a frame's readings, a device's frames): rows in runs of one
        device (a frame's readings) are resolved once per run, and large batches are reduced
        to their distinct hashes first, so the index is searched once per device."""
        n = devices.shape[0]
        if n > 2:
            heads = np.flatnonzero(devices[1:] != devices[:-1]) + 1
            if heads.shape[0] < n // 2:  # runs of two rows or more on average
                starts = np.concatenate(([0], heads))
                return np.repeat(self._distinct(devices[starts]), np.diff(starts, append=n))
        return self._distinct(devices)

    def _distinct(self, devices: BytesArray) -> Int32Array:
        hashes = hash_ids(devices)
        if devices.shape[0] > _DEDUPE_ABOVE and len(self._main) > _BIG_INDEX:
            distinct, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
            if distinct.shape[0] < devices.shape[0] // 2:
                wanted = devices[first]
                if (wanted[inverse] == devices).all():  # no two ids share a hash here
                    return self._resolve(wanted, distinct)[inverse]
        return self._resolve(devices, hashes)

    def _resolve(self, devices: BytesArray, hashes: U64Array) -> Int32Array:
        out = self._delta.lookup(devices, hashes)
        miss = out == UNKNOWN
        if miss.any():
            out[miss] = self._main.lookup(devices[miss], hashes[miss])
        return out

    def upsert(self, keys: BytesArray, ids: Int32Array, active: BoolArray) -> None:
        """Add or replace entries (later entries win over earlier ones)."""
        if keys.shape[0] == 0:
            return
        keys = np.concatenate([self._delta.keys.astype(np.bytes_), keys.astype(np.bytes_)])
        ids = np.concatenate([self._delta.ids, ids.astype(np.int32)])
        active = np.concatenate([self._delta.active, active])
        # keep the last occurrence of each key
        _, last = np.unique(keys[::-1], return_index=True)
        last = keys.shape[0] - 1 - last
        self._delta = _Sorted(keys[last], ids[last], active[last])
        if len(self._delta) > max(1024, len(self._main) // 16):
            self._merge()

    def _merge(self) -> None:
        replaced = self._main.positions(self._delta.keys, self._delta.hashes)
        stale = np.zeros(len(self._main), dtype=bool)
        stale[replaced[replaced >= 0]] = True  # entries the delta replaces
        fresh = ~stale
        self._main = _Sorted(
            np.concatenate([self._main.keys[fresh].astype(np.bytes_), self._delta.keys]),
            np.concatenate([self._main.ids[fresh], self._delta.ids]),
            np.concatenate([self._main.active[fresh], self._delta.active]),
        )
        self._delta = _Sorted.empty()
