"""Property-based fuzzing: random and mutated frames never raise, never hang, and every frame
ends up either as rows or as a reject with a reason."""

from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.frames import FrameBatch
from decoders.gbt32960 import frame as gbt32960_frame
from decoders.gbt32960 import realtime_data as gbt32960_realtime
from decoders.hj212 import frame as hj212_frame
from decoders.jt808 import frame as jt808_frame
from decoders.jt808 import location_body
from decoders.llrp import encode_report
from decoders.nbiot_env import encode_frame
from decoders.parking import encode_frame as parking_frame
from decoders.registry import load_registry
from decoders.streetlight import encode_frame as streetlight_frame

REGISTRY = load_registry()
VALID = {
    "nbiot-env": encode_frame(
        861234567890123,
        1_767_225_600,
        1,
        temperature=20,
        humidity=50,
        pm2_5=10,
        pm10=20,
        noise=40,
        battery=3600,
        rssi=-80,
    ),
    "hj212": hj212_frame(
        "QN=20240101120000000;ST=22;CN=2011;PW=123456;MN=AQ01;Flag=5;"
        "CP=&&DataTime=20240101120000;a34004-Rtd=35,a34004-Flag=N&&"
    ),
    "streetlight": streetlight_frame(
        861234567890123,
        1_767_225_600,
        1,
        voltage=230.1,
        current=0.35,
        power=80.5,
        energy_kwh=1234.5,
        dimming=70,
        lamp_on=True,
    ),
    "parking-sensor": parking_frame(861234567890123, 1_767_225_600, 1, occupied=True),
    "jt808": jt808_frame(
        0x0200,
        "13800138000",
        7,
        location_body(22.5, 114.0, time="260101083000", speed_kmh=60, extras=b"\x30\x01\x1f"),
    ),
    "llrp": encode_report(
        [
            {
                "epc": "300833B2DDD9014000000001",
                "antenna": 2,
                "rssi": -58,
                "first_us": 1_767_225_600_250_000,
                "last_us": 1_767_225_600_400_000,
                "count": 3,
            }
        ]
    ),
    "tagread-json": json.dumps(
        {
            "reader": "",
            "epc": "E2003412",
            "antenna": 1,
            "first_seen": "2026-01-01T08:00:00+08:00",
            "rssi": -60,
        }
    ).encode(),
    "gbt32960": gbt32960_frame(0x02, "LSVAU2180N2183294", gbt32960_realtime()),
    "lwm2m-tlv": bytes.fromhex("e4164441ac0000c10964"),
    "senml-cbor": cbor2.dumps(
        [{-2: "d/", -3: 1.7e9, 0: "t", 1: "Cel", 2: 21.5}, {0: "h", 2: 40, 6: 5}]
    ),
    "senml-json": json.dumps(
        [{"bn": "d/", "bt": 1.7e9, "n": "t", "u": "Cel", "v": 21.5}, {"n": "h", "v": 40, "t": 5}]
    ).encode(),
}


def _check(name: str, frames: list[bytes]) -> None:
    batch = FrameBatch(name, "fuzz")
    for f in frames:  # an LwM2M-style source path names the object for lwm2m-tlv
        batch.append(f, "fuzz/3303/0", "", "", 1_767_225_600_000_000)
    out = REGISTRY.get(name).decode_batch(batch)
    rejected = {r.index for r in out.rejects}
    assert all(r.reason for r in out.rejects)
    assert len(rejected) == len(out.rejects), "one reject per frame at most"
    with_rows: set[int] = set()
    for rows in out.rows.values():
        with_rows |= set(rows.frame_index.tolist())
        n = len(rows)
        assert all(len(col) == n for col in rows.columns.values())
    assert not (with_rows & rejected), "a rejected frame produced rows"
    assert out.frames_ok == len(frames) - len(rejected)


@pytest.mark.parametrize("name", sorted(VALID))
@settings(max_examples=300, deadline=2000)
@given(frames=st.lists(st.binary(max_size=200), max_size=20))
def test_random_bytes_never_raise(name: str, frames: list[bytes]) -> None:
    _check(name, frames)


@pytest.mark.parametrize("name", sorted(VALID))
@settings(max_examples=300, deadline=2000)
@given(data=st.data())
def test_mutated_valid_frames_never_raise(name: str, data: st.DataObject) -> None:
    frame = bytearray(VALID[name])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    _check(name, [bytes(frame), bytes(frame[:cut]), VALID[name]])


def test_integers_too_large_for_a_float_are_rejected_not_raised() -> None:
    huge = "1" + "0" * 400
    frames = [f'[{{"n":"a","v":{huge}}}]'.encode(), f'[{{"n":"a","t":{huge},"v":1}}]'.encode()]
    _check("senml-json", frames)
    batch = FrameBatch("senml-json", "fuzz")
    for f in frames:
        batch.append(f, "fuzz", "d", "", 0)
    reasons = [r.reason for r in REGISTRY.get("senml-json").decode_batch(batch).rejects]
    assert reasons == [
        "senml_invalid: record 0: 'v' is out of range",
        "senml_invalid: record 0: 't' is out of range",
    ]


@settings(max_examples=200, deadline=2000)
@given(
    pack=st.recursive(
        st.none()
        | st.booleans()
        | st.floats()
        | st.integers()
        | st.text(max_size=10)
        | st.integers(min_value=10**300, max_value=10**330),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["bn", "bt", "bu", "bv", "n", "u", "v", "vb", "s", "t"]),
                children,
                max_size=5,
            )
        ),
        max_leaves=20,
    )
)
def test_arbitrary_json_in_senml_shape_never_raises(pack: object) -> None:
    _check("senml-json", [json.dumps(pack).encode()])
