"""LwM2M TLV: the specification's Device-object example, IPSO sensors, the uCIFI lamp."""

from __future__ import annotations

import struct

import pytest

from core.frames import FrameBatch
from decoders.lwm2m_tlv import DECODER, parse

# OMA-TS-LightweightM2M-V1_0 §6.4.3.1, the Device object (single instance) example:
# manufacturer, model, serial, firmware, power sources [1, 5], voltages [3800, 5000] mV,
# currents [125, 900] mA, battery 100 %, memory free 15 KB, error code [0],
# current time 0x5182428F, UTC offset "+02:00", binding "U".
DEVICE_EXAMPLE = bytes.fromhex(
    " ".join(
        [
            "C8 00 14 4F70656E204D6F62696C6520416C6C69616E6365",  # 0 manufacturer
            "C8 01 16 4C69676874776569676874204D324D20436C69656E74",  # 1 model number
            "C8 02 09 333435303030313233",  # 2 serial number
            "C3 03 312E30",  # 3 firmware version
            "86 06 410001 410105",  # 6 available power sources [1, 5]
            "88 07 08 42000ED8 42011388",  # 7 power source voltage [3800, 5000]
            "87 08 41007D 42010384",  # 8 power source current [125, 900]
            "C1 09 64",  # 9 battery level
            "C1 0A 0F",  # 10 memory free
            "83 0B 410000",  # 11 error code [0]
            "C4 0D 5182428F",  # 13 current time
            "C6 0E 2B30323A3030",  # 14 UTC offset
            "C1 10 55",  # 16 binding
        ]
    )
)


def _decode(*frames: tuple[bytes, str]):  # type: ignore[no-untyped-def]
    b = FrameBatch("lwm2m-tlv", "test")
    for payload, source in frames:
        b.append(payload, source, "ep-1", "", 1_767_225_600_000_000)
    return DECODER.decode_batch(b)


def test_specification_device_example_parses() -> None:
    entries = parse(DEVICE_EXAMPLE)
    assert [(k, i) for k, i, _ in entries] == [
        (3, 0),
        (3, 1),
        (3, 2),
        (3, 3),
        (2, 6),
        (2, 7),
        (2, 8),
        (3, 9),
        (3, 10),
        (2, 11),
        (3, 13),
        (3, 14),
        (3, 16),
    ]
    assert entries[0][2] == b"Open Mobile Alliance"
    assert entries[5][2] == [(1, 0, b"\x0e\xd8"), (1, 1, b"\x13\x88")]


def test_device_object_numeric_resources_become_readings() -> None:
    out = _decode((DEVICE_EXAMPLE, "/up/env/ep-1/3/0"))
    assert out.rejects == []
    r = out.rows["env_readings"]
    got = dict(zip(r.columns["metric"].tolist(), r.columns["value"].tolist(), strict=True))
    assert got == {
        b"device.power_source_voltage.0": 3800.0,
        b"device.power_source_voltage.1": 5000.0,
        b"device.power_source_current.0": 125.0,
        b"device.power_source_current.1": 900.0,
        b"device.battery_level": 100.0,
        b"device.memory_free": 15.0,
        b"device.error_code": 0.0,
        b"device.current_time": float(0x5182428F),
    }


def test_ipso_temperature_instances_with_timestamp() -> None:
    inst0 = (
        b"\xe4\x16\x44"
        + struct.pack(">f", 21.5)  # 5700 sensor value (16-bit id)
        + b"\xe4\x15\xe2"
        + struct.pack(">f", 25.0)  # 5602 max measured
        + b"\xe4\x15\x8e"
        + struct.pack(">i", 1_767_225_000)
    )  # 5518 timestamp
    inst1 = b"\xe8\x16\x44\x08" + struct.pack(">d", -3.25)
    payload = bytes([0x08, 0, len(inst0)]) + inst0 + bytes([0x08, 1, len(inst1)]) + inst1
    out = _decode((payload, "coap:/up/env/ep-1/3303"))
    r = out.rows["env_readings"]
    assert list(
        zip(
            r.columns["metric"].tolist(),
            r.columns["value"].tolist(),
            r.columns["time"].tolist(),
            strict=True,
        )
    ) == [
        (b"temperature", 21.5, 1_767_225_000_000_000),
        (b"temperature.max", 25.0, 1_767_225_000_000_000),
        (b"temperature[1]", -3.25, 1_767_225_600_000_000),
    ]


def test_ucifi_lamp_controller_resources() -> None:
    payload = (
        b"\xc1\x03\x46"  # 3 dimming level 70
        b"\xc1\x05\x01"  # 5 lamp failure true
        + b"\xc4\x2c"
        + struct.pack(">f", 229.5)  # 44 lamp voltage
        + b"\xc4\x2e"
        + struct.pack(">f", 88.0)
    )  # 46 active power
    r = _decode((payload, "/up/streetlight/ep-1/3416/0")).rows["env_readings"]
    assert dict(zip(r.columns["metric"].tolist(), r.columns["value"].tolist(), strict=True)) == {
        b"lamp.dimming": 70.0,
        b"lamp.failure": 1.0,
        b"lamp.voltage": 229.5,
        b"lamp.power": 88.0,
    }


@pytest.mark.parametrize(
    ("payload", "source", "reason"),
    [
        (b"\xe4\x16", "/3303/0", "truncated: TLV header at offset 0"),
        (b"\xe4\x16\x44\x00", "/3303/0", "truncated: TLV 5700 needs 4 bytes at offset 3"),
        (
            b"\xe3\x16\x44\x00\x00\x00",
            "/3303/0",
            "lwm2m_invalid: resource 5700: a float has 4 or 8 bytes, got 3",
        ),
        (b"\xc1\x05\x02", "/3416/0", "lwm2m_invalid: resource 5: a boolean is 0 or 1, got 2"),
        (
            b"",
            "/up/env/ep-1/lwm2m-tlv",
            "lwm2m_invalid: source '/up/env/ep-1/lwm2m-tlv' names no "
            "object (…/<object>[/<instance>])",
        ),
        (b"", "/9999/0", "lwm2m_invalid: object 9999 is not supported"),
    ],
)
def test_rejects(payload: bytes, source: str, reason: str) -> None:
    out = _decode((payload, source))
    assert [r.reason for r in out.rejects] == [reason]
