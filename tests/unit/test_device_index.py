"""The vectorised device index: batch resolution, additions, disabled devices."""

from __future__ import annotations

import numpy as np

from device_registry.index import DISABLED, UNKNOWN, DeviceIndex


def test_resolves_known_unknown_and_disabled_in_one_call() -> None:
    idx = DeviceIndex(
        np.array([b"b", b"a", b"c"]),
        np.array([2, 1, 3], dtype=np.int32),
        np.array([True, True, False]),
    )
    got = idx.resolve(np.array([b"a", b"zz", b"c", b"b", b""]))
    assert got.tolist() == [1, UNKNOWN, DISABLED, 2, UNKNOWN]


def test_upserts_are_visible_and_survive_a_merge() -> None:
    idx = DeviceIndex()
    keys = np.array([f"dev-{i:05d}".encode() for i in range(3000)])
    for start in range(0, 3000, 500):  # several deltas, forcing merges
        idx.upsert(
            keys[start : start + 500],
            np.arange(start, start + 500, dtype=np.int32) + 1,
            np.ones(500, dtype=np.bool_),
        )
    assert len(idx) == 3000
    assert idx.resolve(keys).tolist() == list(range(1, 3001))
    idx.upsert(np.array([b"dev-00007"]), np.array([7], dtype=np.int32), np.array([False]))
    assert idx.resolve(np.array([b"dev-00007", b"dev-00008"])).tolist() == [DISABLED, 9]
