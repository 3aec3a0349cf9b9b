"""Plain values: the numpy fast path agrees with the per-frame rules, exact reject reasons."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.frames import FrameBatch
from decoders.value import DECODER, MAX_PAYLOAD, PlainValueError, parse_value

TOPIC = "cityflux/up/env/esp-1/value/temperature"


def _batch(payloads: list[bytes], source: str = TOPIC, hint: str = "esp-1") -> FrameBatch:
    b = FrameBatch("value", "test")
    for i, p in enumerate(payloads):
        b.append(p, source, hint, "env", 1_767_225_600_000_000 + i)
    return b


def _slow(payload: bytes) -> float | str:
    try:
        return parse_value(payload)
    except PlainValueError as exc:
        return str(exc)


def test_numbers_and_binary_states_become_one_reading_each_at_the_receive_time() -> None:
    out = DECODER.decode_batch(_batch([b"21.50", b" -3e2\n", b"ON", b"off", b"True"]))
    assert out.rejects == []
    rows = out.rows["env_readings"]
    assert rows.columns["value"].tolist() == [21.5, -300.0, 1.0, 0.0, 1.0]
    assert rows.columns["metric"].tolist() == [b"temperature"] * 5
    assert rows.devices.tolist() == [b"esp-1"] * 5
    assert rows.columns["time"].tolist() == [1_767_225_600_000_000 + i for i in range(5)]
    assert rows.frame_index.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"twenty", "value_invalid: not a number: b'twenty'"),
        (b"", "value_invalid: not a number: b''"),
        (b"nan", "value_invalid: value must be finite"),
        (b"-inf", "value_invalid: value must be finite"),
        (b"1\x00", "value_invalid: NUL byte in payload"),
        (b"1" * (MAX_PAYLOAD + 1), f"value_invalid: payload longer than {MAX_PAYLOAD} bytes"),
    ],
)
def test_bad_payloads_are_rejected_with_the_reason_and_neighbours_kept(
    payload: bytes, reason: str
) -> None:
    out = DECODER.decode_batch(_batch([b"1", payload, b"2"]))
    assert [(r.index, r.reason) for r in out.rejects] == [(1, reason)]
    rows = out.rows["env_readings"]
    assert rows.columns["value"].tolist() == [1.0, 2.0]
    assert rows.frame_index.tolist() == [0, 2]


def test_a_source_without_a_metric_level_or_a_device_is_rejected() -> None:
    out = DECODER.decode_batch(_batch([b"1"], source="cityflux/up/env/esp-1/value/"))
    assert [r.reason for r in out.rejects] == [
        "value_invalid: the topic or path names no metric (…/value/<metric>): "
        "'cityflux/up/env/esp-1/value/'"
    ]
    out = DECODER.decode_batch(_batch([b"1"], hint=""))
    assert [r.reason for r in out.rejects] == ["value_invalid: no device (the topic names it)"]


def test_coap_paths_name_the_metric_the_same_way() -> None:
    out = DECODER.decode_batch(_batch([b"7"], source="/up/water/wl-3/value/level_m"))
    assert out.rows["env_readings"].columns["metric"].tolist() == [b"level_m"]


def test_empty_batch() -> None:
    out = DECODER.decode_batch(_batch([]))
    assert out.rejects == []
    assert len(out.rows["env_readings"]) == 0


_payloads = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).encode()),
    st.integers(-(10**30), 10**30).map(lambda i: str(i).encode()),
    st.sampled_from([b"ON", b"off", b" 1_0 ", b"\t2\n", b"1e400", b"0x10", b".5", b"5.", b"+1"]),
    st.binary(max_size=MAX_PAYLOAD + 4),
    st.text(alphabet="0123456789.eE+-_ \t\n\x00", max_size=12).map(str.encode),
)


@given(st.lists(_payloads, min_size=1, max_size=30))
def test_batch_decoding_equals_the_per_frame_rules(payloads: list[bytes]) -> None:
    out = DECODER.decode_batch(_batch(payloads))
    want = [_slow(p) for p in payloads]
    got: list[float | str] = [math.nan] * len(payloads)
    for r in out.rejects:
        got[r.index] = r.reason
    rows = out.rows["env_readings"]
    for i, v in zip(rows.frame_index.tolist(), rows.columns["value"].tolist(), strict=True):
        got[i] = v
    assert got == want
