"""Bulk imports: the streaming COPY path, the index rebuild for large imports into a small
registry, and the repeated-device fallback, against real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg

from decoders.registry import load_registry
from device_registry.importer import import_devices
from device_registry.profiles import DeviceProfile, store
from device_registry.upsert import BULK_MIN_ROWS
from storage.migrate import TimescaleMode, migrate
from tests.helpers import query

PROFILES = [DeviceProfile(name="nbiot-env", kind="env", decoder="nbiot-env", report_interval_s=600)]


def _registry(pg_url: str) -> psycopg.Connection[tuple[object, ...]]:
    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    conn = psycopg.connect(pg_url, autocommit=True)
    store(conn, PROFILES)
    return conn


def _indexes(pg_url: str) -> list[str]:
    return sorted(
        str(r[0])
        for r in query(pg_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'devices'")
    )


def test_a_large_import_into_an_empty_registry_rebuilds_its_indexes(
    pg_url: str, tmp_path: Path
) -> None:
    n = BULK_MIN_ROWS + 5
    path = tmp_path / "devices.csv"
    with path.open("w") as out:
        out.write("external_id,profile,district,lat,lon\n")
        for i in range(n):
            out.write(f"{861000000000000 + i},nbiot-env,D{i % 7},22.{i % 1000:03d},114.5\n")
        out.write("bad id,nbiot-env,,,\n")
    with _registry(pg_url) as conn:
        before = _indexes(pg_url)
        result = import_devices(conn, path)
    assert (result.inserted, result.lines, [str(e) for e in result.errors]) == (
        n,
        n + 1,
        [
            f"line {n + 2}: external_id: 'bad id': 1-64 bytes without spaces, control "
            "characters, '/', '+', '#', ':' or '\\'"
        ],
    )
    assert _indexes(pg_url) == before  # dropped for the copy, rebuilt after it
    assert query(
        pg_url,
        "SELECT count(*), min(id), max(id), count(DISTINCT kind), min(lat), max(lat) FROM devices",
    ) == [(n, 1, n, 1, 22.0, 22.999)]
    # the next device the service provisions gets the next id, and the unique key holds
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (external_id) VALUES ('after-import')")
        dup = conn.execute(
            "INSERT INTO devices (external_id) VALUES ('861000000000000') "
            "ON CONFLICT (external_id) DO NOTHING"
        )
        assert dup.rowcount == 0
    assert query(pg_url, "SELECT id FROM devices WHERE external_id = 'after-import'") == [(n + 1,)]


def test_a_device_named_twice_in_a_large_import_takes_its_last_line(
    pg_url: str, tmp_path: Path
) -> None:
    n = BULK_MIN_ROWS + 10
    path = tmp_path / "devices.csv"
    with path.open("w") as out:
        out.write("external_id,district\n")
        for i in range(n):
            out.write(f"D{i:07d},first\n")
        out.write("D0000003,second\n")
    with _registry(pg_url) as conn:
        before = _indexes(pg_url)
        result = import_devices(conn, path)
    assert (result.inserted, result.duplicates) == (n, 1)
    assert _indexes(pg_url) == before
    assert query(pg_url, "SELECT district FROM devices WHERE external_id = 'D0000003'") == [
        ("second",)
    ]
    assert query(pg_url, "SELECT count(*), count(DISTINCT id) FROM devices") == [(n, n)]


def test_a_small_import_into_a_large_registry_updates_in_place(pg_url: str, tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    big.write_text("external_id\n" + "".join(f"B{i:07d}\n" for i in range(BULK_MIN_ROWS)))
    small = tmp_path / "small.csv"
    small.write_text("external_id,district,status\nB0000001,Futian,\nNEW1,Luohu,disabled\n")
    with _registry(pg_url) as conn:
        import_devices(conn, big)
        result = import_devices(conn, small)
    assert (result.inserted, result.updated, result.unchanged) == (1, 1, 0)
    assert query(
        pg_url,
        "SELECT external_id, district, status, id FROM devices "
        "WHERE external_id IN ('B0000001', 'NEW1') ORDER BY 1",
    ) == [("B0000001", "Futian", "active", 2), ("NEW1", "Luohu", "disabled", BULK_MIN_ROWS + 1)]


def test_secrets_get_random_salts_and_a_reimport_keeps_each_stored_hash(
    pg_url: str, tmp_path: Path
) -> None:
    from device_registry.credentials import iterations_of, verify

    path = tmp_path / "devices.csv"
    path.write_text(
        "external_id,profile,secret\n"
        "861000000000001,nbiot-env,same-secret-for-both\n"
        "861000000000002,nbiot-env,same-secret-for-both\n"
    )
    hashes = "SELECT external_id, credential_hash, updated_at FROM devices ORDER BY id"
    with _registry(pg_url) as conn:
        first = import_devices(conn, path)
        stored = query(pg_url, hashes)
        again = import_devices(conn, path)
        unchanged = query(pg_url, hashes)
        path.write_text(
            "external_id,profile,secret\n"
            "861000000000001,nbiot-env,a-new-secret-now\n"
            "861000000000002,nbiot-env,same-secret-for-both\n"
        )
        changed = import_devices(conn, path)
        after = query(pg_url, hashes)
        slower = import_devices(conn, path, iterations=5_000)
        rehashed = query(pg_url, hashes)
    (_, h1, _), (_, h2, _) = stored
    salt = lambda h: h.split("$")[3]  # noqa: E731
    assert salt(h1) != salt(h2)  # per-device random salts: equal secrets, unequal hashes
    assert len(salt(h1)) == len(salt(h2)) == 16  # 12 characters, base64
    assert verify("same-secret-for-both", h1)
    assert verify("same-secret-for-both", h2)
    assert (first.inserted, again.updated, again.unchanged) == (2, 0, 2)
    assert unchanged == stored  # idempotent: nothing rewritten, updated_at unmoved
    assert (changed.updated, changed.unchanged) == (1, 1)
    assert verify("a-new-secret-now", after[0][1])
    assert after[1] == stored[1]
    # another iteration count hashes every secret afresh (EMQX takes one count)
    assert slower.updated == 2
    assert [iterations_of(r[1]) for r in rehashed] == [5_000, 5_000]
    assert verify("same-secret-for-both", rehashed[1][1])
