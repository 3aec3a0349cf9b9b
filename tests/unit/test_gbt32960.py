"""GB/T 32960.3-2016: BCC, every real-time information unit, NULL markers, exact rejects."""

from __future__ import annotations

import pytest

from core.frames import FrameBatch
from decoders.gbt32960 import DECODER, frame
from decoders.gbt32960 import realtime_data as realtime

VIN = "LSVAU2180N2183294"
TIME = bytes([26, 1, 1, 8, 30, 0])  # 2026-01-01 08:30:00 UTC+8, as realtime() uses


def _decode(*frames: bytes, hint: str = ""):  # type: ignore[no-untyped-def]
    b = FrameBatch("gbt32960", "test")
    for f in frames:
        b.append(f, "t", hint, "", 0)
    return DECODER.decode_batch(b)


def test_realtime_frame_gives_status_and_position() -> None:
    out = _decode(frame(0x02, VIN, realtime()), hint=VIN)
    assert out.rejects == []
    ev = out.rows["ev_status"]
    c = {k: v.tolist()[0] for k, v in ev.columns.items()}
    assert c["time"] == 1_767_227_400_000_000
    assert (c["vehicle_state"], c["charging_state"], c["mode"]) == (1, 3, 1)
    assert c["speed_kmh"] == pytest.approx(62.5)
    assert c["odometer_km"] == pytest.approx(12345.6)
    assert c["voltage_v"] == pytest.approx(365.0)
    assert c["current_a"] == pytest.approx(25.0)
    assert (c["soc_pct"], c["gear"], c["insulation_kohm"]) == (76, 0x0E, 5000)
    assert (c["max_alarm_level"], c["alarm_flags"], c["motor_count"]) == (2, 0b101, 1)
    assert c["max_cell_v"] == pytest.approx(4.125)
    assert c["min_cell_v"] == pytest.approx(3.98)
    assert (c["max_temp_c"], c["min_temp_c"], c["reissued"]) == (30, 25, False)
    assert not any(m[0] for m in ev.nulls.values())
    pos = out.rows["vehicle_positions"]
    assert (pos.columns["lat"].tolist(), pos.columns["lon"].tolist()) == ([22.543096], [114.057865])
    assert pos.devices.tolist() == [VIN.encode()]


def test_invalid_markers_are_null_and_reissue_is_flagged() -> None:
    out = _decode(frame(0x03, VIN, realtime(soc=0xFF, voltage_raw=0xFFFE)))
    ev = out.rows["ev_status"]
    assert ev.nulls["soc_pct"].tolist() == [True]
    assert ev.nulls["voltage_v"].tolist() == [True]
    assert ev.columns["reissued"].tolist() == [True]


def test_heartbeat_and_login_are_valid_without_rows() -> None:
    out = _decode(
        frame(0x07, VIN, b""), frame(0x01, VIN, TIME + b"\x00\x01" + b"8" * 20 + b"\x01\x01")
    )
    assert (out.rejects, out.frames_ok, len(out.rows["ev_status"])) == ([], 2, 0)


def test_rejects_carry_exact_reasons() -> None:
    good = frame(0x02, VIN, realtime())
    out = _decode(
        good[:10],
        b"$$" + good[2:],
        good[:-1] + bytes([good[-1] ^ 0x0F]),
        frame(0x02, VIN, TIME + b"\x0a\x00"),
        frame(0x02, VIN, TIME + b"\x01\x00"),
        frame(0x02, "LSVAU2180N2183295", realtime()),
        hint=VIN,
    )
    assert [(r.index, r.reason) for r in out.rejects] == [
        (0, "truncated: need at least 25 bytes, got 10"),
        (1, "bad_header: frame must start with '##'"),
        (2, f"bcc_mismatch expected={good[-1]:02X} got={good[-1] ^ 0x0F:02X}"),
        (3, "gbt32960_invalid: unknown information type 0x0A at offset 6"),
        (4, "truncated: information type 0x01 at offset 6 needs 20 bytes, 1 left"),
        (
            5,
            "gbt32960_invalid: device_mismatch: topic names 'LSVAU2180N2183294', frame "
            "carries 'LSVAU2180N2183295'",
        ),
    ]
