"""The streetlight-controller frame: scaling, invalid markers as NULL, shared validation."""

from __future__ import annotations

from core.frames import FrameBatch
from decoders.crc import crc16_ccitt_false_bytes
from decoders.streetlight import DECODER, FAULT_LAMP, FAULT_RELAY, FRAME, encode_frame

IMEI = 861234567890124


def _batch(*frames: bytes) -> FrameBatch:
    b = FrameBatch("streetlight", "test")
    for f in frames:
        b.append(f, "t", "", "", 0)
    return b


def test_frame_decodes_to_one_scaled_row() -> None:
    f = encode_frame(
        IMEI,
        1_767_225_600,
        9,
        voltage=229.7,
        current=0.412,
        power=91.3,
        energy_kwh=1520.125,
        dimming=60,
        lamp_on=True,
        faults=FAULT_LAMP | FAULT_RELAY,
        temperature=-12,
    )
    assert len(f) == FRAME.itemsize == 34
    out = DECODER.decode_batch(_batch(f))
    assert out.rejects == []
    rows = out.rows["streetlight_status"]
    c = rows.columns
    assert round(float(c["voltage_v"][0]), 3) == 229.7
    assert round(float(c["current_a"][0]), 3) == 0.412
    assert round(float(c["power_w"][0]), 3) == 91.3
    assert float(c["energy_kwh"][0]) == 1520.125
    assert (int(c["dimming_pct"][0]), bool(c["lamp_on"][0])) == (60, True)
    assert int(c["faults"][0]) == 0b101
    assert int(c["temperature_c"][0]) == -12
    assert int(c["time"][0]) == 1_767_225_600_000_000
    assert not any(mask.any() for mask in rows.nulls.values())
    assert rows.devices.tolist() == [b"861234567890124"]


def test_invalid_markers_become_nulls() -> None:
    raw = bytearray(
        encode_frame(
            IMEI,
            1_767_225_600,
            1,
            voltage=230,
            current=0.1,
            power=10,
            energy_kwh=1,
            dimming=50,
            lamp_on=False,
        )
    )
    raw[16:18] = b"\xff\xff"  # voltage
    raw[22:26] = b"\xff\xff\xff\xff"  # energy
    raw[26] = 0xFF  # dimming
    raw[30] = 0x7F  # temperature
    raw[32:34] = crc16_ccitt_false_bytes(bytes(raw[:32])).to_bytes(2, "big")
    rows = DECODER.decode_batch(_batch(bytes(raw))).rows["streetlight_status"]
    assert {k for k, m in rows.nulls.items() if m[0]} == {
        "voltage_v",
        "energy_kwh",
        "dimming_pct",
        "temperature_c",
    }


def test_a_streetlight_frame_is_not_an_env_frame() -> None:
    env = (
        bytes([0xCE])
        + encode_frame(
            IMEI, 0, 0, voltage=0, current=0, power=0, energy_kwh=0, dimming=0, lamp_on=False
        )[1:]
    )
    out = DECODER.decode_batch(_batch(env, b"\xcf"))
    assert [r.reason for r in out.rejects] == [
        "bad_magic: expected CF got CE",
        "truncated: need 34 bytes, got 1",
    ]
