"""The hypertable path against the real TimescaleDB extension (PGlite WASM under Node).

PGlite serves one connection at a time and cannot take COPY FROM STDIN, so these tests use
one connection at a time and the INSERT write method; speed is measured on native PostgreSQL.
"""

from __future__ import annotations

import numpy as np
import psycopg

from alerts import store
from alerts.runtimes import AlertEvent
from core.access import ActorKind, Principal
from core.frames import Decoded, FrameNumbers, TableRows
from core.metrics import Metrics
from decoders.tables import ALL_TABLES, ENV_READINGS, PARKING_READINGS
from device_registry.frameloss import FrameLoss
from device_registry.resolver import DeviceResolver, UnknownDevicePolicy
from parking.config import ParkingConfig
from parking.occupancy import OccupancyStage
from storage.ddl import Backend
from storage.migrate import TimescaleMode, migrate
from storage.writer import BatchWriter, TableWrite, WriteMethod
from tests.services import TimescaleWasm

OPERATOR = Principal("operator-7", ActorKind.TOKEN)

T0 = 1_767_225_600_000_000


def test_migrations_create_hypertable_policies_and_continuous_aggregate(
    timescaledb: TimescaleWasm,
) -> None:
    assert migrate(timescaledb.url, ALL_TABLES, TimescaleMode.REQUIRE) is Backend.TIMESCALEDB
    assert migrate(timescaledb.url, ALL_TABLES, TimescaleMode.AUTO) is Backend.TIMESCALEDB
    with psycopg.connect(timescaledb.url) as conn:
        hyper = conn.execute(
            "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
        ).fetchall()
        dims = conn.execute(
            "SELECT column_name, time_interval FROM timescaledb_information.dimensions "
            "WHERE hypertable_name = 'env_readings'"
        ).fetchall()
        segment = conn.execute(
            "SELECT attname, segmentby_column_index FROM "
            "timescaledb_information.compression_settings WHERE hypertable_name = "
            "'env_readings' AND segmentby_column_index IS NOT NULL"
        ).fetchall()
        jobs = dict(
            conn.execute(
                "SELECT proc_name, config::text FROM timescaledb_information.jobs "
                "WHERE hypertable_name IN ('env_readings', 'env_readings_hourly')"
            ).fetchall()
        )
        caggs = conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates"
        ).fetchall()
    alert_tables = [("alert_events", False), ("alerts", False)]  # migration 0003
    alert_tables += [("device_frame_counts", False), ("device_frame_gaps", False)]  # 0008
    assert sorted(hyper) == sorted([(t.name, True) for t in ALL_TABLES] + alert_tables)
    assert [(c, str(i)) for c, i in dims] == [("time", "1 day, 0:00:00")]
    assert segment == [("device_id", 1)]
    assert '"compress_after": "7 days"' in jobs["policy_compression"]
    assert '"drop_after": "730 days"' in jobs["policy_retention"]
    assert "policy_refresh_continuous_aggregate" in jobs
    assert sorted(caggs) == sorted((f"{t.name}_hourly",) for t in ALL_TABLES if t.hourly)


async def test_rows_written_to_the_hypertable_read_back_once(timescaledb: TimescaleWasm) -> None:
    migrate(timescaledb.url, ALL_TABLES, TimescaleMode.REQUIRE)
    n = 300
    rows = TableRows(
        table="env_readings",
        columns={
            "time": T0 + np.arange(n, dtype=np.int64) * 60_000_000,
            "metric": np.array([b"no2"] * n),
            "value": np.linspace(0, 29.9, n),
            "device_id": np.full(n, 42, dtype=np.int32),
        },
        devices=np.full(n, b"x"),
        frame_index=np.arange(n, dtype=np.int32),
    )
    writer = BatchWriter(timescaledb.url, WriteMethod.INSERT)
    await writer.write([TableWrite(ENV_READINGS, rows)])
    await writer.write([TableWrite(ENV_READINGS, rows)])  # redelivered: stored once
    await writer.close()
    with psycopg.connect(timescaledb.url) as conn:
        count, first, last = conn.execute(
            "SELECT count(*), min(time), max(time) FROM env_readings"
        ).fetchone()  # type: ignore[misc]
        chunks = conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'env_readings'"
        ).fetchone()
        hourly = conn.execute("SELECT count(*), sum(samples) FROM env_readings_hourly").fetchone()
    assert count == n
    assert first.timestamp() == T0 / 1e6
    assert last.timestamp() == T0 / 1e6 + (n - 1) * 60
    assert chunks == (1,)
    assert hourly == (5, n)  # real-time aggregate over 5 hours of minute data


async def test_alerts_live_in_hypertables_and_can_be_acknowledged(
    timescaledb: TimescaleWasm,
) -> None:
    migrate(timescaledb.url, ALL_TABLES, TimescaleMode.REQUIRE)
    hour = 3_600_000_000
    raised = AlertEvent("no2-high", "critical", "raised", T0, "ST01", 7, 7, 90.0, T0, 90.0)
    other = AlertEvent("pm-high", "warning", "raised", T0, "ST02", 8, 8, 80.0, T0, 80.0)
    cleared = AlertEvent("pm-high", "warning", "cleared", T0 + hour, "ST02", 8, 8, 10.0, T0, 80.0)
    async with await psycopg.AsyncConnection.connect(timescaledb.url, autocommit=True) as conn:
        for batch in ([raised, other], [cleared], [cleared]):  # the last one: a retry
            async with conn.transaction():
                await store.lock(conn)
                await store.write_events(conn, batch)
    with psycopg.connect(timescaledb.url, autocommit=True) as conn:
        open_ = store.list_alerts(conn)
        assert [(a["rule"], a["subject"], a["state"]) for a in open_] == [
            ("no2-high", "ST01", "raised")
        ]
        acked = store.acknowledge(conn, open_[0]["id"], OPERATOR, "crew sent")
        assert (acked["state"], acked["acknowledged_by"]) == ("acknowledged", "operator-7")
        cleared_rows = store.list_alerts(conn, state="cleared")
        assert [(a["subject"], a["cleared_value"]) for a in cleared_rows] == [("ST02", 10.0)]
        events = conn.execute("SELECT rule, event FROM alert_events ORDER BY id").fetchall()
        audited = conn.execute("SELECT actor, action FROM audit_log").fetchall()
    assert audited == [("operator-7", "alert.acknowledge")]
    assert events == [
        ("no2-high", "raised"),
        ("pm-high", "raised"),
        ("pm-high", "cleared"),
        ("no2-high", "acknowledged"),
    ]


async def test_frame_gaps_and_counts_are_written_to_hypertables(
    timescaledb: TimescaleWasm,
) -> None:
    migrate(timescaledb.url, ALL_TABLES, TimescaleMode.REQUIRE)
    with psycopg.connect(timescaledb.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO devices (id, external_id, kind, profile) VALUES (5, 'D5', 'env', 'p')"
        )
    metrics = Metrics()
    loss = FrameLoss(DeviceResolver(UnknownDevicePolicy.REJECT), metrics)

    def batch(numbers: list[int]) -> Decoded:
        n = len(numbers)
        nums = FrameNumbers(
            "compact",
            1 << 16,
            np.array([b"D5"] * n),
            np.arange(n, dtype=np.int32),
            np.array(numbers, dtype=np.int64),
        )
        return Decoded(numbers=[nums])

    for numbers in ([1, 2, 6], [7, 4]):  # 3-5 missing, then 4 arrives late
        n = len(numbers)
        loss.observe(batch(numbers), np.full(n, 5, dtype=np.int32), np.ones(n, dtype=np.bool_))
        async with await psycopg.AsyncConnection.connect(timescaledb.url, autocommit=True) as conn:
            await loss.flush(conn)
    with psycopg.connect(timescaledb.url, autocommit=True) as conn:
        gaps = conn.execute(
            "SELECT device_id, stream, first_missing, last_missing, missing FROM device_frame_gaps"
        ).fetchall()
        counts = conn.execute(  # hourly rows: two if the flushes straddle an hour
            "SELECT sum(received)::int, sum(missing)::int FROM device_frame_counts"
        ).fetchall()
        state = conn.execute("SELECT highest FROM device_frame_state").fetchall()
    assert gaps == [(5, "compact", 3, 5, 2)]
    assert counts == [(5, 2)]
    assert state == [(7,)]
    assert (
        metrics.registry.get_sample_value("cityflux_device_frames_missing_total", {"profile": "p"})
        == 3
    )


async def test_lot_occupancy_is_a_hypertable_with_a_continuous_aggregate_per_hour(
    timescaledb: TimescaleWasm,
) -> None:
    migrate(timescaledb.url, ALL_TABLES, TimescaleMode.REQUIRE)
    with psycopg.connect(timescaledb.url, autocommit=True) as conn:
        conn.execute("TRUNCATE parking_lot_occupancy, parking_spaces, parking_lots")
        conn.execute("DELETE FROM devices WHERE external_id LIKE 'tsdb-park-%'")
        ids = [
            int(r[0])
            for r in conn.execute(
                "INSERT INTO devices (external_id, lot, space) "
                "SELECT 'tsdb-park-' || n, 'P7', 'S' || n FROM generate_series(1, 3) n "
                "RETURNING id"
            ).fetchall()
        ]
        conn.execute("INSERT INTO parking_lots (lot, capacity) VALUES ('P7', 3)")
        segment = conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings "
            "WHERE hypertable_name = 'parking_lot_occupancy' AND segmentby_column_index = 1"
        ).fetchall()
    # three spaces over two hours: each report of a car is followed by a second one
    reports = [  # (space, minute, occupied)
        (0, 0, False), (1, 0, False), (2, 0, False),
        (0, 10, True), (0, 11, True), (1, 20, True), (1, 21, True),
        (2, 70, True), (2, 71, True), (0, 80, False), (0, 81, False),
    ]  # fmt: skip
    stage = OccupancyStage(ParkingConfig())
    async with await psycopg.AsyncConnection.connect(timescaledb.url) as conn:
        for space, minute, occupied in reports:  # one batch per report, as they arrive
            rows = TableRows(
                table="parking_readings",
                columns={
                    "time": np.array([T0 + minute * 60_000_000], dtype=np.int64),
                    "seq": np.array([minute], dtype=np.int32),
                    "occupied": np.array([occupied]),
                    "device_id": np.array([ids[space]], dtype=np.int32),
                },
                devices=np.array([b"x"]),
                frame_index=np.zeros(1, dtype=np.int32),
            )
            async with conn.transaction():
                await stage.within(conn, [TableWrite(PARKING_READINGS, rows)])
    with psycopg.connect(timescaledb.url) as conn:
        samples = conn.execute(
            "SELECT (extract(epoch FROM time)::bigint - %s) / 60, occupied "
            "FROM parking_lot_occupancy WHERE lot = 'P7' ORDER BY time",
            (T0 // 1_000_000,),
        ).fetchall()
        hourly = conn.execute(
            "SELECT extract(epoch FROM bucket)::bigint - %s, occupied_min, occupied_max, samples "
            "FROM parking_lot_occupancy_hourly WHERE lot = 'P7' ORDER BY bucket",
            (T0 // 1_000_000,),
        ).fetchall()
        caggs = conn.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates "
            "WHERE view_name = 'parking_lot_occupancy_hourly'"
        ).fetchall()
    assert segment == [("lot",)]
    assert samples == [
        (0, 0), (10, 0), (11, 1), (20, 1), (21, 2), (70, 2), (71, 3), (80, 3), (81, 2),
    ]  # fmt: skip
    assert caggs == [("parking_lot_occupancy_hourly",)]
    assert hourly == [(0, 0, 2, 5), (3600, 2, 3, 4)]
