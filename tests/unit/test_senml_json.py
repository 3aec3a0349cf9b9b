"""SenML JSON (RFC 8428): base fields, relative time, and exact reject reasons."""

from __future__ import annotations

import json

import pytest

from core.frames import FrameBatch
from decoders.senml_json import DECODER

RECEIVED_US = 1_700_000_000_000_000


def _decode(*packs: object, hint: str = "dev1", raw: bytes | None = None):  # type: ignore[no-untyped-def]
    b = FrameBatch("senml-json", "test")
    for p in packs:
        b.append(json.dumps(p).encode(), "t/up/env/dev1/senml-json", hint, "env", RECEIVED_US)
    if raw is not None:
        b.append(raw, "t/up/env/dev1/senml-json", hint, "env", RECEIVED_US)
    return DECODER.decode_batch(b)


def test_rfc8428_multiple_datapoints_example_resolves_base_fields() -> None:
    # RFC 8428 §5.1.2 "Multiple Datapoints" example, values as printed there.
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e09, "bu": "%RH", "v": 20},
        {"u": "lon", "v": 24.30621},
        {"u": "lat", "v": 60.07965},
        {"t": 60, "v": 20.3},
        {"u": "lon", "t": 60, "v": 24.30622},
        {"u": "lat", "t": 60, "v": 60.07965},
        {"t": 120, "v": 20.7},
    ]
    out = _decode(pack, hint="")
    rows = out.rows["env_readings"]
    assert out.rejects == []
    assert set(rows.devices.tolist()) == {b"urn:dev:ow:10e2073a01080063"}
    assert rows.columns["time"].tolist()[-1] == (1_320_067_464 + 120) * 1_000_000
    assert rows.columns["value"].tolist()[0] == 20.0


def test_base_value_and_relative_time() -> None:
    out = _decode(
        [
            {"bn": "dev1/", "bv": 10, "n": "temp", "v": 1.5, "t": -5},
            {"n": "level", "v": 2, "bt": 1_800_000_000},
        ]
    )
    rows = out.rows["env_readings"]
    assert rows.columns["metric"].tolist() == [b"temp", b"level"]
    assert rows.columns["value"].tolist() == [11.5, 12.0]
    assert rows.columns["time"].tolist() == [RECEIVED_US - 5_000_000, 1_800_000_000_000_000]
    assert rows.devices.tolist() == [b"dev1", b"dev1"]


def test_boolean_and_sum_values() -> None:
    rows = _decode([{"n": "door", "vb": True}, {"n": "energy", "s": 12.5}]).rows["env_readings"]
    assert rows.columns["metric"].tolist() == [b"door", b"energy.sum"]
    assert rows.columns["value"].tolist() == [1.0, 12.5]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            b"{not json",
            "json_invalid: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        (
            b"\xff\xfe",
            "json_invalid: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        ),
        (b"{}", "senml_invalid: pack must be an array of records"),
        (b"[]", "senml_invalid: empty pack"),
        (b"[1]", "senml_invalid: record 0: must be a JSON object"),
        (b'[{"n":"t","v":"hot"}]', "senml_invalid: record 0: 'v' must be a number"),
        (b'[{"n":"-bad","v":1}]', "senml_invalid: record 0: invalid name '-bad'"),
        (b'[{"n":"t","v":1,"bt":1e300}]', "senml_invalid: record 0: time 1e+300 out of range"),
    ],
)
def test_bad_packs_are_rejected_with_exact_reasons(payload: bytes, reason: str) -> None:
    out = _decode([{"n": "ok", "v": 1}], raw=payload)
    assert [(r.index, r.reason) for r in out.rejects] == [(1, reason)]
    assert out.rows["env_readings"].frame_index.tolist() == [0]
