"""JT/T 808: escaping, checksum, both header editions, 0x0200 and 0x0704, exact rejects."""

from __future__ import annotations

import struct

import pytest

from core.frames import FrameBatch
from decoders.jt808 import DECODER, escape, frame, location_body, unescape

PHONE = "13800138000"
BODY = location_body(
    22.543096,
    -114.057865,
    time="260101083000",
    speed_kmh=63.5,
    heading=271,
    altitude=35,
    alarm=0b11,
    extras=bytes([0x01, 4]) + (123456).to_bytes(4, "big") + b"\x31\x01\x0c",
)


def _decode(*frames: bytes, hint: str = ""):  # type: ignore[no-untyped-def]
    b = FrameBatch("jt808", "test")
    for f in frames:
        b.append(f, "t", hint, "", 0)
    return DECODER.decode_batch(b)


def test_escaping_matches_the_standards_example() -> None:
    # JT/T 808-2019 §4.4.2: 0x30 0x7E 0x08 0x7D 0x55 is sent as 30 7D 02 08 7D 01 55.
    assert escape(bytes.fromhex("307e087d55")) == bytes.fromhex("307d02087d0155")
    assert unescape(bytes.fromhex("307d02087d0155")) == bytes.fromhex("307e087d55")


@pytest.mark.parametrize("v2019", [False, True])
def test_location_report_decodes_in_both_editions(v2019: bool) -> None:
    out = _decode(frame(0x0200, PHONE, 7, BODY, version_2019=v2019), hint=PHONE)
    assert out.rejects == []
    r = out.rows["vehicle_positions"]
    c = r.columns
    assert r.devices.tolist() == [b"13800138000"]
    assert int(c["time"][0]) == 1_767_227_400_000_000  # 2026-01-01 08:30 UTC+8
    assert (float(c["lat"][0]), float(c["lon"][0])) == (22.543096, -114.057865)
    assert (float(c["speed_kmh"][0]), int(c["heading_deg"][0])) == (63.5, 271)
    assert (int(c["altitude_m"][0]), int(c["alarm"][0])) == (35, 3)
    assert int(c["status"][0]) & 0b1011 == 0b1011  # ACC, fix, west
    assert float(c["mileage_km"][0]) == 12345.6
    assert int(c["satellites"][0]) == 12
    assert (bool(r.nulls["fuel_l"][0]), bool(r.nulls["signal"][0])) == (True, True)


def test_a_body_containing_delimiters_round_trips() -> None:
    body = location_body(0.0, 0.0, time="260101000000", alarm=0x7E7D7E7D)
    f = frame(0x0200, PHONE, 0x7E7D, body)
    assert f.count(b"\x7e") == 2
    out = _decode(f)
    assert out.rejects == []
    assert int(out.rows["vehicle_positions"].columns["alarm"][0]) == 0x7E7D7E7D


def test_batch_of_locations_0704() -> None:
    b2 = location_body(31.2304, 121.4737, time="260101090000", speed_kmh=10)
    items = b"".join(struct.pack(">H", len(b)) + b for b in (BODY, b2))
    out = _decode(frame(0x0704, PHONE, 1, struct.pack(">HB", 2, 1) + items))
    assert out.rejects == []
    assert out.rows["vehicle_positions"].columns["lat"].tolist() == [22.543096, 31.2304]
    assert out.rows["vehicle_positions"].frame_index.tolist() == [0, 0]


def test_heartbeat_is_valid_without_rows() -> None:
    out = _decode(frame(0x0002, PHONE, 3, b""))
    assert (out.rejects, out.frames_ok, len(out.rows["vehicle_positions"])) == ([], 1, 0)


def test_rejects_carry_exact_reasons() -> None:
    good = frame(0x0200, PHONE, 7, BODY)
    raw = unescape(good[1:-1])
    bad_sum = b"\x7e" + escape(raw[:-1] + bytes([raw[-1] ^ 0xFF])) + b"\x7e"
    short = frame(0x0200, PHONE, 7, BODY[:20])
    out = _decode(
        b"\x7e\x02\x00\x7e",
        good[1:],
        b"\x7e\x7d\x05\x00\x7e",
        bad_sum,
        frame(0x0200, PHONE, 7, BODY),
        short,
        frame(0x0999, PHONE, 1, b""),
        frame(0x0200, "13900000000", 7, BODY),
        hint=PHONE,
    )
    assert [(r.index, r.reason) for r in out.rejects] == [
        (0, "truncated: need at least 13 bytes, got 2"),
        (1, "bad_delimiter: frame must start and end with 0x7E"),
        (2, "bad_escape: 0x7D not followed by 01/02 at offset 1"),
        (3, f"checksum_mismatch expected={raw[-1]:02X} got={raw[-1] ^ 0xFF:02X}"),
        (5, "truncated: body shorter than its fields"),
        (6, "jt808_invalid: unsupported message id 0x0999"),
        (
            7,
            "jt808_invalid: device_mismatch: topic names '13800138000', frame carries 013900000000",
        ),
    ]


def _unframe(reply: bytes) -> tuple[int, str, int, bytes]:
    raw = unescape(reply[1:-1])
    check = 0
    for b in raw[:-1]:
        check ^= b
    assert check == raw[-1]
    msg_id, props = struct.unpack_from(">HH", raw, 0)
    if props & 0x4000:
        phone, pos = raw[5:15].hex(), 15
    else:
        phone, pos = raw[4:10].hex(), 10
    (serial,) = struct.unpack_from(">H", raw, pos)
    body = raw[pos + 2 : -1]
    assert len(body) == props & 0x3FF
    return msg_id, phone.lstrip("0"), serial, body


@pytest.mark.parametrize("v2019", [False, True])
def test_registration_authentication_and_acks_get_their_replies(v2019: bool) -> None:
    from decoders.jt808 import auth_code

    # 0x0100 (JT/T 808-2013 §8.5): province, city, maker[5], model[20], terminal id[7],
    # plate colour, plate
    reg = struct.pack(">HH", 44, 300) + b"MAKER" + b"M" * 20 + b"T000001" + b"\x01" + b"B12345"
    code = auth_code(PHONE).encode()
    auth = bytes([len(code)]) + code + b"8" * 15 + b"1" * 20 if v2019 else code
    wrong = bytes([6]) + b"WRONG!" + b"8" * 15 + b"1" * 20 if v2019 else b"WRONG!"
    out = _decode(
        frame(0x0100, PHONE, 1, reg, version_2019=v2019),
        frame(0x0102, PHONE, 2, auth, version_2019=v2019),
        frame(0x0102, PHONE, 3, wrong, version_2019=v2019),
        frame(0x0002, PHONE, 4, b"", version_2019=v2019),
        frame(0x0200, PHONE, 5, BODY, version_2019=v2019),
    )
    assert out.rejects == []
    replies = {i: _unframe(r) for i, r in out.replies}
    assert replies[0] == (0x8100, PHONE, 1, struct.pack(">HB", 1, 0) + code)
    assert replies[1] == (0x8001, PHONE, 2, struct.pack(">HHB", 2, 0x0102, 0))
    assert replies[2] == (0x8001, PHONE, 3, struct.pack(">HHB", 3, 0x0102, 1))
    assert replies[3] == (0x8001, PHONE, 4, struct.pack(">HHB", 4, 0x0002, 0))
    assert 4 not in replies  # location reports: the transport's PUBACK acknowledges them
