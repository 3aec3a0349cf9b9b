"""The NB-IoT environmental frame: layout, scaling, invalid markers and exact reject reasons."""

from __future__ import annotations

import numpy as np

from core.frames import FrameBatch
from decoders.compact import imei_bytes
from decoders.crc import crc16_ccitt_false_bytes
from decoders.nbiot_env import DECODER, FRAME, encode_frame

IMEI = 861234567890123


def _batch(*payloads: bytes, hint: str = "") -> FrameBatch:
    b = FrameBatch("nbiot-env", "test")
    for p in payloads:
        b.append(p, "t/up/env/x/nbiot-env", hint, "env", 1_000_000)
    return b


def _frame(**kw: float) -> bytes:
    args = {
        "temperature": 21.5,
        "humidity": 55.25,
        "pm2_5": 12.3,
        "pm10": 30.1,
        "noise": 48.2,
        "battery": 3600,
        "rssi": -85,
        "status": 0,
    }
    args.update(kw)
    return encode_frame(IMEI, 1_767_225_600, 7, **args)  # type: ignore[arg-type]


def test_crc16_ccitt_false_check_value() -> None:
    # Catalogue of parametrised CRC algorithms (reveng), CRC-16/IBM-3740 alias CCITT-FALSE.
    assert crc16_ccitt_false_bytes(b"123456789") == 0x29B1


def test_frame_is_32_bytes_and_decodes_to_scaled_readings() -> None:
    frame = _frame()
    assert len(frame) == FRAME.itemsize == 32
    out = DECODER.decode_batch(_batch(frame, hint=str(IMEI)))
    assert out.rejects == []
    rows = out.rows["env_readings"]
    got = dict(zip(rows.columns["metric"].tolist(), rows.columns["value"].tolist(), strict=True))
    assert got == {
        b"temperature": 21.5,
        b"humidity": 55.25,
        b"pm2_5": 12.3,
        b"pm10": 30.1,
        b"noise": 48.2,
        b"battery": 3600.0,
        b"rssi": -85.0,
        b"status": 0.0,
    }
    assert set(rows.devices.tolist()) == {b"861234567890123"}
    assert set(rows.columns["time"].tolist()) == {1_767_225_600_000_000}


def test_invalid_markers_produce_no_reading() -> None:
    raw = bytearray(_frame())
    raw[16:18] = b"\x7f\xff"  # temperature invalid
    raw[28] = 0x7F  # rssi invalid
    crc = crc16_ccitt_false_bytes(bytes(raw[:30]))
    raw[30:32] = crc.to_bytes(2, "big")
    rows = DECODER.decode_batch(_batch(bytes(raw))).rows["env_readings"]
    assert b"temperature" not in rows.columns["metric"].tolist()
    assert b"rssi" not in rows.columns["metric"].tolist()
    assert len(rows) == 6


def test_rejects_carry_exact_reasons_and_neighbours_survive() -> None:
    good = _frame()
    bad_crc = good[:30] + b"\x3c\x00"
    expected_crc = good[30:].hex().upper()
    bad_magic = b"\x7b" + good[1:]
    out = DECODER.decode_batch(
        _batch(good[:20], good, bad_crc, good + b"\x00", bad_magic, b"\xce\x02" + good[2:])
    )
    reasons = {r.index: r.reason for r in out.rejects}
    assert reasons == {
        0: "truncated: need 32 bytes, got 20",
        2: f"crc_mismatch expected={expected_crc} got=3C00",
        3: "too_long: expected 32 bytes, got 33",
        4: "bad_magic: expected CE got 7B",
        5: "unsupported_version: 2",
    }
    assert set(out.rows["env_readings"].frame_index.tolist()) == {1}
    assert out.frames_ok == 1


def test_frame_from_another_device_than_the_topic_names_is_rejected() -> None:
    out = DECODER.decode_batch(_batch(_frame(), hint="869999999999999"))
    assert [r.reason for r in out.rejects] == [
        "device_mismatch: topic names '869999999999999', frame carries IMEI 861234567890123"
    ]


def test_imei_formatting_is_zero_padded_15_digits() -> None:
    got = imei_bytes(np.array([1, 861234567890123], dtype=np.uint64))
    assert got.tolist() == [b"000000000000001", b"861234567890123"]
