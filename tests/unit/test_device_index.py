"""The vectorised device index: batch resolution, additions, disabled devices."""

from __future__ import annotations

import numpy as np

from device_registry.index import DISABLED, UNKNOWN, DeviceIndex, hash_ids


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


def test_hash_collisions_never_resolve_to_the_wrong_device(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from device_registry import index as index_module

    # every id hashes to one of two values: lookups must still compare the ids themselves
    monkeypatch.setattr(
        index_module,
        "hash_ids",
        lambda keys: np.array([len(k) % 2 for k in keys.tolist()], dtype=np.uint64),
    )
    keys = np.array([f"id{i}".encode() for i in range(50)])
    idx = DeviceIndex(keys, np.arange(50, dtype=np.int32), np.ones(50, dtype=np.bool_))
    idx.upsert(np.array([b"id7", b"new"]), np.array([70, 99], dtype=np.int32), np.ones(2, bool))
    wanted = np.array([b"id0", b"id49", b"id7", b"new", b"id50", b"i"])
    assert idx.resolve(wanted).tolist() == [0, 49, 70, 99, UNKNOWN, UNKNOWN]
    idx._merge()
    assert idx.resolve(wanted).tolist() == [0, 49, 70, 99, UNKNOWN, UNKNOWN]
    assert len(idx) == 51


def test_large_random_index_matches_a_dict() -> None:
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(10**14, 10**15, 200_000).astype("S15"))
    ids = rng.permutation(keys.shape[0]).astype(np.int32)
    idx = DeviceIndex(keys, ids, np.ones(keys.shape[0], dtype=np.bool_))
    pick = rng.integers(0, keys.shape[0], 10_000)
    assert (idx.resolve(keys[pick]) == ids[pick]).all()
    assert (idx.resolve(np.char.add(keys[pick], b"x")) == UNKNOWN).all()


def test_the_hash_does_not_depend_on_the_array_width() -> None:
    narrow = np.array([b"s0", b"861000000000001"])
    wide = narrow.astype("S40")
    assert hash_ids(narrow).tolist() == hash_ids(wide).tolist()
    idx = DeviceIndex(narrow, np.array([1, 2], dtype=np.int32), np.ones(2, dtype=np.bool_))
    assert idx.resolve(wide).tolist() == [1, 2]


def test_copy_text_parses_vectorised_and_with_escapes() -> None:
    from device_registry.resolver import parse_copy_text

    plain = parse_copy_text(b"861000000000001\t1\tt\nST-01\t23\tf\nG\t4567890\tt\n")
    assert plain.keys.tolist() == [b"861000000000001", b"ST-01", b"G"]
    assert plain.ids.tolist() == [1, 23, 4567890]
    assert plain.active.tolist() == [True, False, True]
    # COPY text escapes a backslash in an id (auto-provisioned ids come from topics)
    escaped = parse_copy_text(b"a\\\\b\t7\tt\n")
    assert (escaped.keys.tolist(), escaped.ids.tolist()) == ([b"a\\b"], [7])
    assert parse_copy_text(b"").keys.shape == (0,)


def test_rows_in_runs_of_one_device_resolve_as_each_row_alone() -> None:
    # a frame's readings are consecutive rows of one device: the index searches once per run
    keys = np.array([b"a", b"b", b"c", b"d"])
    idx = DeviceIndex(
        keys, np.array([1, 2, 3, 4], dtype=np.int32), np.array([True, True, False, True])
    )
    rng = np.random.default_rng(7)
    pool = np.array([b"a", b"b", b"c", b"d", b"zz", b""])
    runs = rng.integers(0, pool.shape[0], 400)
    rows = np.repeat(pool[runs], rng.integers(1, 9, 400))  # mostly runs, some rows alone
    alone = np.concatenate([idx.resolve(rows[i : i + 1]) for i in range(rows.shape[0])])
    got = idx.resolve(rows)
    assert got.tolist() == alone.tolist()
    assert {UNKNOWN, DISABLED, 1, 2, 4} <= set(got.tolist())
