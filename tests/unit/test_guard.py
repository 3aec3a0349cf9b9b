"""decoders.guard.screen: rows PostgreSQL would refuse move their whole frame to rejects."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.frames import Decoded, Reject, TableRows
from decoders.guard import _invalid_utf8, screen
from decoders.limits import text_problem
from decoders.tables import ALL_TABLES, ENV_READINGS, EV_STATUS, VEHICLE_POSITIONS

SPECS = {t.name: t for t in ALL_TABLES}


def _env(
    times: list[int], metrics: list[bytes], values: list[float], frames: list[int]
) -> TableRows:
    return TableRows(
        ENV_READINGS.name,
        {
            "time": np.array(times, dtype=np.int64),
            "metric": np.array(metrics, dtype=np.bytes_),
            "value": np.array(values, dtype=np.float64),
        },
        np.array([b"dev"] * len(times), dtype=np.bytes_),
        np.array(frames, dtype=np.int32),
    )


def _decoded(rows: TableRows, n_frames: int, *more: TableRows) -> Decoded:
    out = Decoded(frames_ok=n_frames)
    for r in (rows, *more):
        out.rows[r.table] = r
    return out


def test_a_clean_batch_comes_back_as_the_same_object() -> None:
    decoded = _decoded(_env([1, 2, 3], [b"t", "°C".encode(), b"h"], [1.0, 2.0, 3.0], [0, 1, 2]), 3)
    assert screen(decoded, SPECS) is decoded


def test_a_nul_byte_inside_a_text_value_rejects_its_frame_and_all_its_rows() -> None:
    decoded = _decoded(
        _env([1, 2, 3, 4], [b"a", b"b\0c", b"d", b"e"], [1, 2, 3, 4], [0, 1, 1, 2]), 3
    )
    out = screen(decoded, SPECS)
    assert out.rejects == [Reject(1, "bad_text: env_readings.metric contains a NUL byte")]
    assert out.frames_ok == 2
    assert out.rows["env_readings"].frame_index.tolist() == [0, 2]
    assert out.rows["env_readings"].columns["metric"].tolist() == [b"a", b"e"]


def test_invalid_utf8_is_rejected_and_valid_non_ascii_is_kept() -> None:
    decoded = _decoded(_env([1, 2], ["µg".encode(), b"\xff\xfe"], [1, 2], [0, 1]), 2)
    out = screen(decoded, SPECS)
    assert out.rejects == [Reject(1, "bad_text: env_readings.metric is not valid UTF-8")]
    assert out.rows["env_readings"].columns["metric"].tolist() == ["µg".encode()]


def test_times_outside_postgresql_range_and_its_infinities_are_rejected() -> None:
    big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    decoded = _decoded(_env([0, big, small, -(2**62)], [b"a"] * 4, [1] * 4, [0, 1, 2, 3]), 4)
    out = screen(decoded, SPECS)
    assert [r.reason for r in out.rejects] == [
        f"out_of_range: env_readings.time={big} (timestamptz)",
        f"out_of_range: env_readings.time={small} (timestamptz)",
        f"out_of_range: env_readings.time={-(2**62)} (timestamptz)",
    ]
    assert out.frames_ok == 1


def test_nan_and_infinity_in_a_float_column_are_rejected() -> None:
    decoded = _decoded(
        _env([1, 2, 3], [b"a"] * 3, [1.0, float("nan"), float("-inf")], [0, 1, 2]), 3
    )
    out = screen(decoded, SPECS)
    assert [r.reason for r in out.rejects] == [
        "not_finite: env_readings.value=nan",
        "not_finite: env_readings.value=-inf",
    ]


def _positions(heading: list[int], frames: list[int], null: list[bool]) -> TableRows:
    n = len(heading)
    return TableRows(
        VEHICLE_POSITIONS.name,
        {
            "time": np.ones(n, dtype=np.int64),
            "lat": np.zeros(n),
            "lon": np.zeros(n),
            "heading_deg": np.array(heading, dtype=np.int64),  # wider than smallint
            "speed_kmh": np.array([1e39] * n, dtype=np.float64),  # beyond float32
            "alarm": np.zeros(n, dtype=np.int64),
            "status": np.zeros(n, dtype=np.int64),
        },
        np.array([b"v"] * n, dtype=np.bytes_),
        np.array(frames, dtype=np.int32),
        nulls={"heading_deg": np.array(null), "speed_kmh": np.ones(n, dtype=bool)},
    )


def test_wide_integers_are_range_checked_and_null_slots_are_not() -> None:
    rows = _positions([70000, 70000, 10], [0, 1, 2], [False, True, False])
    out = screen(_decoded(rows, 3), SPECS)
    assert out.rejects == [Reject(0, "out_of_range: vehicle_positions.heading_deg=70000 (int16)")]
    assert out.rows["vehicle_positions"].frame_index.tolist() == [1, 2]


def test_a_bad_row_in_one_table_removes_the_frames_rows_from_every_table() -> None:
    ev = TableRows(
        EV_STATUS.name,
        {"time": np.array([1, 2], dtype=np.int64), "reissued": np.zeros(2, dtype=bool)},
        np.array([b"v", b"w"], dtype=np.bytes_),
        np.array([0, 1], dtype=np.int32),
    )
    pos = _positions([70000, 5], [0, 1], [False, False])
    decoded = _decoded(ev, 2, pos)
    decoded.replies = [(0, b"r0"), (1, b"r1")]
    out = screen(decoded, SPECS)
    assert [r.index for r in out.rejects] == [0]
    assert out.rows["ev_status"].frame_index.tolist() == [1]
    assert out.rows["vehicle_positions"].frame_index.tolist() == [1]
    assert out.replies == [(1, b"r1")]


def test_rows_of_a_frame_the_decoder_already_rejected_are_dropped_without_a_second_reject() -> None:
    decoded = _decoded(_env([1, 2], [b"a", b"b"], [1, 2], [0, 1]), 1)
    decoded.rejects = [Reject(1, "crc_mismatch expected=0001 got=0002")]
    out = screen(decoded, SPECS)
    assert out.rejects == decoded.rejects
    assert out.frames_ok == 1
    assert out.rows["env_readings"].frame_index.tolist() == [0]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=12).map(lambda b: b.rstrip(b"\0") or b"x"), min_size=1)
)
def test_vectorised_utf8_check_agrees_with_python(values: list[bytes]) -> None:
    column = np.array(values, dtype=np.bytes_)
    mat = column.view(np.uint8).reshape(len(values), -1)
    got = set(_invalid_utf8(mat).tolist())
    assert got == {j for j, v in enumerate(values) if text_problem(v) == "is not valid UTF-8"}
