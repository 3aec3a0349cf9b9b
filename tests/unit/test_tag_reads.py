"""LLRP RO_ACCESS_REPORT and the canonical JSON event land in the same columns."""

from __future__ import annotations

import json

import pytest

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
