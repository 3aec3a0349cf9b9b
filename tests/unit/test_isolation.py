"""How a failing batch is split, and the acknowledgement handles that survive reconnects."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import errors

from core.frames import Decoded, FrameBatch
from decoders.streetlight import DECODER as STREETLIGHT
from decoders.streetlight import encode_frame as streetlight_frame
from ingest.mqtt_source import GENERATIONS, NO_ACK, AckHandles, puback_packets
from ingest.pipeline import LogBudget, Stage, StageError, _split, decode_apart
from storage.writer import is_transient


def _batch(n: int) -> FrameBatch:
    b = FrameBatch("hj212", "mqtt")
    for i in range(n):
        b.append(bytes([i]), f"t/{i}", f"d{i}", "env", i, i)
    return b


def test_redelivered_frames_are_the_first_suspects() -> None:
    b = _batch(6)
    b.redelivered += [4, 1]
    assert _split(b, [2]) == ([1, 4], [0, 2, 3, 5])


def test_then_the_frames_the_error_names_then_halves() -> None:
    b = _batch(5)
    assert _split(b, [3]) == ([3], [0, 1, 2, 4])
    assert _split(b, []) == ([0, 1], [2, 3, 4])
    b.redelivered += [0, 1, 2, 3, 4]  # all delivered before: that says nothing
    assert _split(b, []) == ([0, 1], [2, 3, 4])


def test_a_subset_keeps_its_frames_marks_and_refusals() -> None:
    b = _batch(5)
    b.redelivered.append(3)
    b.refused[4] = "frame_too_large: 9 bytes > 8"
    part = b.subset([3, 4])
    assert part.payloads == [b"\x03", b"\x04"]
    assert part.ack_ids == [3, 4]
    assert part.redelivered == [0]
    assert part.refused == {1: "frame_too_large: 9 bytes > 8"}
    assert part.ack_sink is b.ack_sink


def test_a_stage_error_names_its_stage_and_cause_and_is_bounded() -> None:
    err = StageError(Stage.RULES, KeyError("x" * 1000))
    assert str(err).startswith("rules: KeyError: 'xxx")
    assert len(str(err)) == 300


def test_acks_from_an_earlier_connection_are_never_sent() -> None:
    acks = AckHandles()
    acks.new_connection()
    old = [acks.handle(7), acks.handle(8), acks.handle(None)]
    assert old[2] == NO_ACK
    acks.new_connection()  # a reconnect: the broker may reuse 7 for another frame
    new = [acks.handle(7)]
    assert acks.release(old) == []
    assert acks.release(new + old) == [7]


def test_pubacks_leave_in_the_order_their_publishes_arrived() -> None:
    acks = AckHandles()
    acks.new_connection()
    h = [acks.handle(pid) for pid in (10, 11, 12, 13, 14)]
    assert acks.release([h[2], h[3]]) == []  # 10 and 11 are not committed yet
    assert acks.release([h[1]]) == []
    assert acks.release([h[0]]) == [10, 11, 12, 13]
    assert acks.release([h[4], acks.handle(None)]) == [14]


def test_an_abandoned_frame_is_never_acknowledged_and_does_not_hold_the_rest() -> None:
    acks = AckHandles()
    acks.new_connection()
    h = [acks.handle(pid) for pid in (1, 2, 3)]
    assert acks.release([h[1], h[2]]) == []
    assert acks.release([h[0]], ok=False) == [2, 3]


def test_puback_packets_are_four_bytes_each() -> None:
    assert puback_packets([1, 0x1234]) == bytes.fromhex("40020001 40021234")


class _Exploding:
    """streetlight, raising for any batch that holds a b"BOOM" frame."""

    name = "streetlight"
    content_formats: tuple[int, ...] = ()
    tables = STREETLIGHT.tables

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        if b"BOOM" in batch.payloads:
            raise ValueError("boom")
        return STREETLIGHT.decode_batch(batch)


def test_a_raising_decoder_is_taken_apart_in_memory_and_the_good_rows_are_unchanged() -> None:
    good = FrameBatch("streetlight", "mqtt")
    whole = FrameBatch("streetlight", "mqtt")
    for i in range(40):
        frame = streetlight_frame(861234567890000 + i % 7, 1_767_225_600 + i, i, voltage=230.0,
                                  current=0.3, power=70.0 + i, energy_kwh=12.5, dimming=i % 101,
                                  lamp_on=i % 2 == 0)  # fmt: skip
        good.append(frame, "t", "", "streetlight", i)
        whole.append(frame, "t", "", "streetlight", i)
        if i in (5, 6, 31):
            whole.append(b"BOOM", "t", "", "streetlight", i)
    expected = STREETLIGHT.decode_batch(good)
    got = decode_apart(_Exploding(), whole)
    assert [(r.index, r.reason) for r in got.rejects] == [
        (6, "stage_error: decode: ValueError: boom"),
        (8, "stage_error: decode: ValueError: boom"),
        (34, "stage_error: decode: ValueError: boom"),
    ]
    assert got.frames_ok == 40
    kept = [i for i in range(43) if i not in (6, 8, 34)]
    for name, rows in expected.rows.items():
        merged = got.rows[name]
        assert merged.frame_index.tolist() == [kept[i] for i in rows.frame_index.tolist()]
        for col, values in rows.columns.items():
            assert merged.columns[col].tolist() == values.tolist()
        assert merged.devices.tolist() == rows.devices.tolist()
        assert {k: v.tolist() for k, v in merged.nulls.items()} == {
            k: v.tolist() for k, v in rows.nulls.items()
        }


def test_frames_refused_at_the_edge_are_dropped_from_what_their_batch_decoded() -> None:
    batch = FrameBatch("streetlight", "mqtt")
    for i in range(4):
        batch.append(streetlight_frame(861234567890000 + i, 1_767_225_600 + i, i, voltage=230.0,
                                       current=0.3, power=70.0, energy_kwh=1.0, dimming=50,
                                       lamp_on=True), "t", "", "streetlight", i)  # fmt: skip
    batch.append(b"garbage", "t", "", "streetlight", 4)
    whole = STREETLIGHT.decode_batch(batch)
    kept = whole.without({1, 4})
    assert kept.frames_ok == whole.frames_ok - 1
    assert kept.rejects == []
    for name, rows in kept.rows.items():
        assert set(rows.frame_index.tolist()) == {0, 2, 3}, name
        assert len(rows) == len(whole.rows[name]) * 3 // 4


def test_a_log_budget_holds_back_a_flood_and_says_how_much() -> None:
    budget = LogBudget(lines=2, window_s=3600)
    assert [budget.allow() for _ in range(5)] == ["", "", None, None, None]
    budget._start = time.monotonic() - 3601  # the window has passed (not 0.0: a machine
    # booted less than an hour ago has a monotonic clock below the window)
    assert budget.allow() == " (3 similar lines held back)"


def test_arrival_numbers_past_two_to_the_32_still_release() -> None:
    acks = AckHandles()
    for _ in range(GENERATIONS + 1):  # generations wrap too
        acks.new_connection()
    acks._base = 2**32 - 2  # as after 4.3 billion frames on one connection
    handles = [acks.handle(pid) for pid in (1, 2, 3, 4, 5)]
    assert all(0 <= h < 2**63 for h in handles)
    assert acks.release(handles[2:]) == []
    assert acks.release(handles[:2]) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (errors.AdminShutdown, True),  # 57P01: the server is shutting down
        (errors.DiskFull, True),  # 53100
        (errors.TooManyConnections, True),  # 53300
        (errors.DeadlockDetected, True),  # 40P01
        (errors.ProgramLimitExceeded, False),  # 54000: an index row too long — the frame's
        (errors.QueryCanceled, False),  # 57014: a statement timeout on a huge batch
        (errors.CheckViolation, False),  # 23514
        (errors.UndefinedTable, False),  # 42P01: retried as a system fault, not here
    ],
)
def test_the_sqlstate_decides_whether_an_error_is_transient(
    error: type[psycopg.Error], transient: bool
) -> None:
    assert is_transient(error("x")) is transient


def test_a_lost_connection_reported_by_the_client_is_transient() -> None:
    assert is_transient(psycopg.OperationalError("server closed the connection unexpectedly"))


def test_a_frame_that_makes_a_decoder_raise_is_logged_with_its_frame_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = FrameBatch("streetlight", "mqtt")
    batch.append(b"BOOM", "c/up/streetlight/sl-9/streetlight", "sl-9", "streetlight", 0)
    with caplog.at_level("WARNING", logger="ingest.pipeline"):
        decode_apart(_Exploding(), batch, LogBudget())
    [record] = caplog.records
    fields = (record.transport, record.device, record.format)  # type: ignore[attr-defined]
    assert fields == ("mqtt", "sl-9", "streetlight")  # the JSON log shows them (log_format)
