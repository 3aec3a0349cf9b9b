"""HJ 212: framing, CRC, both editions, the real 2016 corpus, and the 9014 response."""

from __future__ import annotations

import gzip
from collections import Counter

import pytest

from core.frames import FrameBatch
from decoders.hj212 import DECODER, crc_hj212, crc_hj212_batch, frame
from simulators.corpus import hj212_corpus_dir

# HJ 212-2017 annex example, as quoted in shared/corpora/hj212/README.md.
ANNEX = (
    b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    b"Flag=5;CP=&&RtdInterval=30&&1C80"
)


def _decode(*frames: bytes, hint: str = ""):  # type: ignore[no-untyped-def]
    b = FrameBatch("hj212", "test")
    for f in frames:
        b.append(f, "t", hint, "", 0)
    return DECODER.decode_batch(b)


def test_crc_reference_values() -> None:
    # shared/corpora/hj212/README.md: '123456789' -> 0x2F80 (not MODBUS 0x4B37); annex 1C80
    assert crc_hj212(b"123456789") == 0x2F80
    assert crc_hj212(ANNEX[6:-4]) == 0x1C80
    batch = crc_hj212_batch([b"123456789", ANNEX[6:-4], b"", b"1"])
    assert batch.tolist() == [0x2F80, 0x1C80, 0xFFFF, crc_hj212(b"1")]


def test_annex_example_is_valid_and_asks_for_a_9014_response() -> None:
    out = _decode(ANNEX + b"\r\n")
    assert out.rejects == []
    assert out.frames_ok == 1
    ((idx, reply),) = out.replies
    assert idx == 0
    assert reply.startswith(b"##")
    seg = reply[6:-6]
    assert seg == (
        b"QN=20160801085857223;ST=91;CN=9014;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&"
    )
    assert int(reply[2:6]) == len(seg)
    assert int(reply[-6:-2], 16) == crc_hj212(seg)


def test_2005_frame_becomes_readings_with_mapped_codes_flags_and_utc_time() -> None:
    # first line of 2016-08-24_00.h212.gz
    line = (
        b"##0139ST=32;CN=2011;PW=123456;MN=LD130133000015;CP=&&DataTime=20160824003817000;"
        b"B01-Rtd=36.91;011-Rtd=231.0,011-Flag=N;060-Rtd=1.803,060-Flag=N&&4980"
    )
    out = _decode(line)
    assert out.rejects == []
    rows = out.rows["hj212_readings"]
    got = list(
        zip(
            rows.columns["factor"].tolist(),
            rows.columns["code"].tolist(),
            rows.columns["field"].tolist(),
            rows.columns["value"].tolist(),
            rows.columns["flag"].tolist(),
            rows.nulls["flag"].tolist(),
            strict=True,
        )
    )
    assert got == [
        (b"w00000", b"B01", b"Rtd", 36.91, b"", True),
        (b"w01018", b"011", b"Rtd", 231.0, b"N", False),
        (b"w21003", b"060", b"Rtd", 1.803, b"N", False),
    ]
    # 2016-08-24 00:38:17.000 UTC+8 = 2016-08-23 16:38:17 UTC
    assert set(rows.columns["time"].tolist()) == {1_471_970_297_000_000}
    assert set(rows.columns["cn"].tolist()) == {2011}
    assert set(rows.devices.tolist()) == {b"LD130133000015"}


def test_2017_codes_are_kept_and_status_frames_become_status_rows() -> None:
    f2017 = frame(
        "QN=20240101120000000;ST=22;CN=2011;PW=123456;MN=AQ01;Flag=4;"
        "CP=&&DataTime=20240101120000;a34004-Rtd=35,a34004-Flag=N;"
        "a21026-Rtd=8.5,a21026-Flag=T&&"
    )
    status = frame(
        "ST=32;CN=2021;PW=123456;MN=AQ01;CP=&&DataTime=20240101120000;SB1-RS=1;SB2-RS=0&&"
    )
    heartbeat = frame("ST=32;CN=8013;PW=123456;MN=AQ01;Flag=0;CP=&&HeartbeatTime=120&&")
    out = _decode(f2017, status, heartbeat)
    assert out.rejects == []
    assert out.frames_ok == 3
    assert out.replies == []
    rows = out.rows["hj212_readings"]
    assert rows.columns["factor"].tolist() == [b"a34004", b"a21026"]
    assert rows.columns["flag"].tolist() == [b"N", b"T"]
    st = out.rows["device_status"]
    assert st.columns["key"].tolist() == [b"SB1-RS", b"SB2-RS"]
    assert st.columns["value"].tolist() == [1.0, 0.0]
    assert st.frame_index.tolist() == [1, 1]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"#0139ST=32", "bad_header: frame must start with '##'"),
        (b"##01", "truncated: need at least 10 bytes, got 4"),
        (b"##01a9ST=32;CN=2011&&4980", "bad_header: length field '01a9' is not 4 digits"),
        (
            b"##0139ST=32;CN=2011;CP=&&&&4980",
            "length_mismatch: header says 139 bytes, data segment has 21",
        ),
        (b"##0021ST=32;CN=2011;CP=&&&&ZZZZ", "bad_crc_field: 'ZZZZ' is not 4 hex digits"),
        (
            frame("ST=32;CN=2011;PW=1;MN=X;CP=&&DataTime=20161301000000;a-Rtd=1&&"),
            "hj212_invalid: bad DataTime '20161301000000'",
        ),
        (
            frame("ST=32;CN=2011;PW=1;MN=X;CP=&&DataTime=20160101000000;a-Rtd=x&&"),
            "hj212_invalid: a-Rtd='x' is not a number",
        ),
        (
            frame("ST=32;CN=2011;PW=1;CP=&&DataTime=20160101000000&&"),
            "hj212_invalid: no MN (station id)",
        ),
        (frame("ST=32;CN=2011;PW=1;MN=X;CP=&&a-Rtd=1&&"), "hj212_invalid: no DataTime"),
    ],
)
def test_bad_frames_are_rejected_with_exact_reasons(raw: bytes, reason: str) -> None:
    out = _decode(raw, ANNEX)
    assert [(r.index, r.reason) for r in out.rejects] == [(0, reason)]
    assert out.frames_ok == 1


def test_crc_mismatch_reason_names_both_values() -> None:
    out = _decode(ANNEX[:-4] + b"3C00")
    assert [r.reason for r in out.rejects] == ["crc_mismatch expected=1C80 got=3C00"]


def test_whole_corpus_decodes_and_the_counts_add_up() -> None:
    """shared/corpora/hj212: 190,365 valid frames, 98 invalid lines, CN counts per README."""
    files = sorted(hj212_corpus_dir().glob("*.h212.gz"))
    assert len(files) == 21
    lines: list[bytes] = []
    for f in files:
        with gzip.open(f, "rb") as fh:
            lines += fh.read().splitlines()
    assert len(lines) == 190_463
    ok, rejected, cns, stations = 0, Counter(), Counter(), set()
    rows_per_station: Counter[bytes] = Counter()
    for start in range(0, len(lines), 10_000):
        chunk = lines[start : start + 10_000]
        out = _decode(*chunk)
        ok += out.frames_ok
        rejected.update(r.reason.split(":")[0].split(" ")[0] for r in out.rejects)
        bad = {r.index for r in out.rejects}
        for j, line in enumerate(chunk):
            if j not in bad:
                cns[line.split(b"CN=", 1)[1][:4]] += 1
                stations.add(line.split(b"MN=", 1)[1].split(b";", 1)[0])
        rows_per_station.update(out.rows["hj212_readings"].devices.tolist())
    assert ok == 190_365
    assert sum(rejected.values()) == 98
    assert cns[b"2011"] == 96_976
    assert cns[b"2051"] == 37_937
    assert cns[b"2061"] == 6_403
    assert cns[b"2031"] == 327
    assert cns[b"2021"] == 21_586
    assert cns[b"9015"] == 15_718
    assert cns[b"8013"] == 9_616
    assert cns[b"2072"] == 1_018
    assert len(stations) == 290
    assert set(rows_per_station) <= stations
