"""The occupancy stage leaves out reports dated far ahead of the clock (parking/occupancy.py):
one frame from a device clock gone wrong must not freeze its space until that time."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from core.frames import TableRows
from decoders.tables import PARKING_READINGS
from parking.config import ParkingConfig
from parking.debounce import Debounce, step
from parking.occupancy import _UPSERT, OccupancyStage
from storage.writer import TableWrite

S = 1_000_000
NOW = 1_800_000_000 * S


class _Cursor:
    async def fetchall(self) -> list[Any]:
        return []


class _Conn:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def execute(self, sql: str, params: Any = None) -> _Cursor:
        self.calls.append((sql, params))
        return _Cursor()


def _writes(reports: list[tuple[int, int, bool]]) -> list[TableWrite]:
    n = len(reports)
    rows = TableRows(
        table=PARKING_READINGS.name,
        columns={
            "device_id": np.array([d for d, _, _ in reports], dtype=np.int32),
            "time": np.array([t for _, t, _ in reports], dtype=np.int64),
            "occupied": np.array([o for _, _, o in reports], dtype=np.bool_),
        },
        devices=np.array([f"dev{d}".encode() for d, _, _ in reports], dtype=np.bytes_),
        frame_index=np.arange(n, dtype=np.int32),
    )
    return [TableWrite(PARKING_READINGS, rows)]


def _stage() -> OccupancyStage:
    return OccupancyStage(ParkingConfig(max_ahead_s=3600), clock_us=lambda: NOW)


def test_a_report_from_the_future_is_not_applied_and_the_rest_are() -> None:
    stage, conn = _stage(), _Conn()
    reports = [(1, NOW - 10 * S, True), (2, NOW + 10 * 365 * 86400 * S, False)]
    asyncio.run(stage.within(conn, _writes(reports)))
    upsert = [p for sql, p in conn.calls if sql == _UPSERT]
    assert len(upsert) == 1
    assert upsert[0][0] == [1]  # only the space whose report is in time
    assert stage.ahead == 1


def test_a_batch_of_only_future_reports_touches_nothing() -> None:
    stage, conn = _stage(), _Conn()
    asyncio.run(stage.within(conn, _writes([(2, NOW + 3601 * S, True)])))
    assert conn.calls == []
    # within the allowance (a device clock a little fast, a replay at speed) it applies
    asyncio.run(stage.within(conn, _writes([(2, NOW + 3599 * S, True)])))
    assert [p[0] for sql, p in conn.calls if sql == _UPSERT] == [[2]]


def test_why_a_future_report_must_not_reach_the_debounce() -> None:
    # what the stage guards against: once applied, every true report is "old news"
    rule = Debounce()
    s = step(None, NOW, False, rule)
    s = step(s, NOW + 10 * 365 * 86400 * S, False, rule)
    for k in range(1, 5):
        s = step(s, NOW + k * 60 * S, True, rule)
    assert not s.occupied
