"""LLRP RO_ACCESS_REPORT and the canonical JSON event land in the same columns."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.frames import FrameBatch
from decoders.llrp import DECODER as LLRP
from decoders.llrp import encode_report
from decoders.tagread_json import DECODER as JSON_EVENTS

READ = {
    "epc": "300833B2DDD9014000000001",
    "antenna": 2,
    "rssi": -58,
    "first_us": 1_767_225_600_250_000,
    "last_us": 1_767_225_600_400_000,
    "count": 3,
}


def _batch(name: str, *frames: bytes, hint: str = "G-0101") -> FrameBatch:
    b = FrameBatch(name, "test")
    for f in frames:
        b.append(f, "t", hint, "", 0)
    return b


def test_llrp_header_is_version_1_type_61() -> None:
    assert encode_report([READ])[:2] == bytes.fromhex("043d")  # PROTOCOLS.md


def test_llrp_report_rows() -> None:
    second = dict(READ, epc="300833B2DDD9014000000002", antenna=1, rssi=-70, count=1)
    out = LLRP.decode_batch(_batch("llrp", encode_report([READ, second])))
    assert out.rejects == []
    r = out.rows["vehicle_tag_reads"]
    assert r.columns["epc"].tolist() == [b"300833B2DDD9014000000001", b"300833B2DDD9014000000002"]
    assert r.columns["antenna"].tolist() == [2, 1]
    assert r.columns["rssi_dbm"].tolist() == [-58, -70]
    assert r.columns["read_count"].tolist() == [3, 1]
    assert r.columns["time"].tolist()[0] == 1_767_225_600_250_000
    assert r.columns["last_seen"].tolist()[0] == 1_767_225_600_400_000
    assert r.nulls["tid"].tolist() == [True, True]
    assert r.devices.tolist() == [b"G-0101", b"G-0101"]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x04\x3d\x00", "truncated: need 10 header bytes, got 3"),
        (encode_report([READ])[:-3], "llrp_invalid: header says 53 bytes, message has 50"),
        (
            b"\x04\x3e" + encode_report([READ])[2:],
            "llrp_invalid: message type 62 is not RO_ACCESS_REPORT (61)",
        ),
    ],
)
def test_llrp_rejects(frame: bytes, reason: str) -> None:
    out = LLRP.decode_batch(_batch("llrp", frame, encode_report([READ])))
    assert [(r.index, r.reason) for r in out.rejects] == [(0, reason)]


def test_json_event_and_llrp_report_give_the_same_row() -> None:
    event = {
        "reader": "G-0101",
        "epc": READ["epc"],
        "antenna": 2,
        "rssi": -58,
        "count": 3,
        "first_seen": "2026-01-01T08:00:00.250+08:00",
        "last_seen": 1_767_225_600_400,
    }
    j = JSON_EVENTS.decode_batch(_batch("tagread-json", json.dumps(event).encode()))
    llrp = LLRP.decode_batch(_batch("llrp", encode_report([READ])))
    a, b = j.rows["vehicle_tag_reads"], llrp.rows["vehicle_tag_reads"]
    for col in ("time", "epc", "antenna", "rssi_dbm", "last_seen", "read_count"):
        assert a.columns[col].tolist() == b.columns[col].tolist(), col


def test_json_plate_tid_and_rejects() -> None:
    ok = {
        "epc": "e2003412",
        "tid": "E28011700000020A",
        "plate": "粤B12345",
        "first_seen": "2026-01-01T08:00:00Z",
    }
    out = JSON_EVENTS.decode_batch(
        _batch(
            "tagread-json",
            json.dumps([ok, ok | {"antenna": 3}]).encode(),
            b'{"epc":"XYZ","first_seen":1}',
            b'{"epc":"AA"}',
            b"[]",
            json.dumps(ok | {"reader": "G-9"}).encode(),
            json.dumps(ok | {"first_seen": "2026-01-01T08:00:00"}).encode(),
        )
    )
    r = out.rows["vehicle_tag_reads"]
    assert r.columns["plate"].tolist() == ["粤B12345".encode()] * 2
    assert r.columns["tid"].tolist() == [b"E28011700000020A"] * 2
    assert r.columns["epc"].tolist() == [b"E2003412"] * 2
    assert [(x.index, x.reason) for x in out.rejects] == [
        (1, "tagread_invalid: 'epc' must be a hex string"),
        (2, "tagread_invalid: 'epc' and 'first_seen' are required"),
        (3, "tagread_invalid: empty array"),
        (4, "tagread_invalid: device_mismatch: topic names 'G-0101', event names 'G-9'"),
        (5, "tagread_invalid: 'first_seen' '2026-01-01T08:00:00' has no UTC offset"),
    ]


def test_a_reader_named_only_by_the_event_must_be_text_postgresql_takes() -> None:
    events = [{"reader": r, "epc": "E2", "first_seen": 1} for r in ("G\x00", "\ud800", "G-1")]
    batch = _batch("tagread-json", *(json.dumps(e).encode() for e in events), hint="")
    out = JSON_EVENTS.decode_batch(batch)
    assert [(r.index, r.reason) for r in out.rejects] == [
        (0, "bad_text: reader contains a NUL byte"),
        (1, "bad_text: reader is not valid UTF-8"),
    ]
    assert out.rows["vehicle_tag_reads"].devices.tolist() == [b"G-1"]


# -- the usual-shape path and the checked path give the same verdicts and values ----------

_TEXT = st.text(alphabet=st.sampled_from("0aF9gZ-粤\x00 \ud800"), max_size=6) | st.sampled_from(
    ["E2003412", "e28011", "", "Ａ1", "G-0101", "ﬀ", "x" * 300]
)
_NUM = (
    st.integers(-40_000, 40_000)
    | st.integers(-(2**70), 2**70)
    | st.sampled_from(
        [0, 1, -1, 2**15, -(2**15) - 1, 2**31, 2**42, 2**42 + 1, -(2**40) - 1, 1_767_225_600_000]
    )
)
_VALUE = (
    st.none() | st.booleans() | _NUM | _TEXT | st.floats(allow_nan=True) | st.just([]) | st.just({})
)
_KEYS = ("epc", "first_seen", "reader", "tid", "plate", "antenna", "rssi", "last_seen", "count")
_EVENT = st.dictionaries(st.sampled_from((*_KEYS, "other")), _VALUE, max_size=9)
_USUAL_EVENT = st.fixed_dictionaries(
    {"epc": st.sampled_from(["E2003412", "e28011600000000000001f2a"]), "first_seen": _NUM},
    optional={
        "reader": _TEXT,
        "tid": st.none() | _TEXT,
        "plate": st.none() | _TEXT,
        "antenna": st.none() | _NUM,
        "rssi": st.none() | _NUM,
        "last_seen": st.none() | _NUM,
        "count": st.none() | _NUM,
    },
)


def _rows(out: object) -> list[tuple[object, ...]]:
    r = out.rows["vehicle_tag_reads"]  # type: ignore[attr-defined]
    cols = [r.columns[c].tolist() for c in r.columns]
    nulls = [r.nulls[c].tolist() for c in sorted(r.nulls)]
    return list(zip(*cols, *nulls, r.devices.tolist(), r.frame_index.tolist(), strict=True))


def _assert_both_paths_agree(frames: list[bytes], hint: str) -> None:
    """The batch decoded as it is (usual shapes on the fast path) and with every frame sent
    down the checked path: the same rejects with the same reasons, the same rows."""
    from decoders import tagread_json

    fast = JSON_EVENTS.decode_batch(_batch("tagread-json", *frames, hint=hint))
    usual = tagread_json._usual
    try:
        tagread_json._usual = lambda *_: None  # type: ignore[assignment]
        checked = JSON_EVENTS.decode_batch(_batch("tagread-json", *frames, hint=hint))
    finally:
        tagread_json._usual = usual
    assert [(x.index, x.reason) for x in fast.rejects] == [
        (x.index, x.reason) for x in checked.rejects
    ]
    assert _rows(fast) == _rows(checked)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(_EVENT, _USUAL_EVENT, st.lists(_USUAL_EVENT, max_size=3)),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["G-0101", ""]),
    st.booleans(),
)
def test_usual_and_checked_paths_agree_on_every_frame(
    events: list[object], hint: str, escaped: bool
) -> None:
    frames = [json.dumps(e, ensure_ascii=escaped).encode("utf-8", "surrogatepass") for e in events]
    _assert_both_paths_agree(frames, hint)


_BASE = {"epc": "e2003412", "first_seen": 1_767_225_600_000, "antenna": 1, "rssi": -50}
_ONE_OFF = [
    {},
    {"reader": "G-0101"},
    {"reader": "G-9"},
    {"reader": ""},
    {"reader": None},
    {"reader": "G" * 300},
    {"reader": "站-1"},
    {"reader": "G\x00"},
    {"reader": "\ud800"},
    {"epc": "XYZ"},
    {"epc": "ﬀ"},
    {"epc": "E" * 300},
    {"epc": ""},
    {"tid": "e280"},
    {"tid": "nothex"},
    {"tid": "F" * 300},
    {"plate": "粤B12345"},
    {"plate": "a\x00"},
    {"plate": "\ud800"},
    {"plate": "P" * 300},
    {"plate": 5},
    {"first_seen": 2**42 + 1},
    {"first_seen": -(2**40) - 1},
    {"first_seen": 10**20},
    {"first_seen": 1.5},
    {"first_seen": True},
    {"first_seen": "2026-01-01T08:00:00Z"},
    {"last_seen": 1_767_225_600_100},
    {"last_seen": 2**63},
    {"antenna": 40_000},
    {"antenna": True},
    {"rssi": -40_000},
    {"rssi": 1.0},
    {"count": 40_000},
    {"count": 2**31},
    {"count": None},
]


@pytest.mark.parametrize("change", _ONE_OFF, ids=repr)
@pytest.mark.parametrize("hint", ["G-0101", ""])
@pytest.mark.parametrize("escaped", [True, False])
def test_each_check_of_the_usual_path_agrees_with_the_checked_path(
    change: dict[str, object], hint: str, escaped: bool
) -> None:
    event = _BASE | change
    frames = [
        json.dumps(e, ensure_ascii=escaped).encode("utf-8", "surrogatepass")
        for e in (event, [event, _BASE])
    ]
    _assert_both_paths_agree(frames, hint)


def test_the_usual_event_takes_the_usual_path() -> None:
    from decoders.tagread_json import _usual

    frame = b'{"reader":"G-1","antenna":1,"epc":"e280","rssi":-50,"first_seen":1767225600000}'
    reads = _usual(frame, "G-1", 7)
    assert reads is not None
    assert (reads[0].epc, reads[0].first_seen_us, reads[0].frame) == ("E280", 1767225600000000, 7)
    assert _usual(b'{"epc":"e280","first_seen":1767225600000,"x":"\xff"}', "G-1", 0) is None
    deep = b'{"epc":"e280","first_seen":1,"x":' + b"[" * 40 + b"]" * 40 + b"}"
    assert _usual(deep, "G-1", 0) is None  # unknown fields are skipped, not unchecked
    out = JSON_EVENTS.decode_batch(_batch("tagread-json", deep))
    assert [x.reason for x in out.rejects] == ["too_deep: event nested over 32 levels"]
