"""Scenario files, recordings and the report's arithmetic (pure functions, no services)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from core.yamlfile import DocumentError
from simulators.accounting import quantiles
from simulators.coap_client import max_age_s
from simulators.recording import RecordingError, RecordWriter, read_frames
from simulators.scenario import load_scenario

SCENARIOS = sorted((Path(__file__).parents[2] / "simulators" / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_shipped_scenario_is_valid(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.groups
    assert sum(g.count for g in sc.groups) <= 1_000_000


def test_a_city_of_a_million_devices_ships() -> None:
    assert (
        sum(g.count for g in load_scenario(Path("simulators/scenarios/city-1m.yaml")).groups)
        == 1_000_000
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: x\nduration_s: 10\ngroups:\n  - name: a\n    model: toaster\n"
            "    count: 1\n    interval_s: 1\n",
            "s.yaml:5: groups[0].model: unknown model 'toaster' (known: hj212-station, "
            "nbiot-env, nbiot-senml, streetlight, gantry, ev, jt808, water-level, "
            "parking-space)",
        ),
        (
            "name: x\nduration_s: 10\ngroups:\n  - name: a\n    model: ev\n    count: 1\n"
            "    interval_s: 0.5\n",
            "s.yaml:4: groups[0]: interval_s: ev frames carry times to 1 s",
        ),
        (
            "name: x\nduration_s: 10\ngroups:\n  - name: a\n    model: ev\n    format: llrp\n"
            "    count: 1\n    interval_s: 1\n",
            "s.yaml:4: groups[0]: model ev speaks gbt32960, not 'llrp'",
        ),
        (
            "name: x\nduration_s: 10\ngroups:\n  - name: a\n    model: gantry\n    count: 4\n"
            "    interval_s: 1\n    options: {roads: 2, speeders: 2}\n",
            "s.yaml:8: groups[0].options: speeders: Input should be less than or equal to 1",
        ),
        (
            "name: x\nduration_s: 10\ngroups:\n  - name: a\n    model: ev\n    count: 1\n"
            "    interval_s: 1\n  - name: a\n    model: ev\n    count: 1\n    interval_s: 1\n",
            "s.yaml:1: group names must be distinct: a",
        ),
        (
            "name: x\nduration_s: 10\nstart: 2026-01-01T00:00:00\ngroups:\n  - name: a\n"
            "    model: ev\n    count: 1\n    interval_s: 1\n",
            "s.yaml:3: start: start needs a UTC offset (e.g. 2026-01-01T08:00:00+08:00)",
        ),
        (
            "name: x\nduration_s: 10\ngroups:\n  - name: a\n    model: ev\n    count: 600000\n"
            "    interval_s: 1\n  - name: b\n    model: ev\n    count: 600000\n    interval_s: 1\n",
            "s.yaml:1: 1,200,000 devices: at most 1,000,000 in a scenario",
        ),
    ],
)
def test_scenario_errors_name_the_file_line_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(DocumentError) as err:
        load_scenario(path)
    assert str(err.value) == message.replace("s.yaml", str(path))


def test_recording_round_trip_keeps_time_transport_source_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "r.cfx"
    frames = [
        (1_767_225_600_000_001 + i, "coap" if i % 3 else "mqtt", f"t/{i}", bytes([i % 256]) * i)
        for i in range(300)
    ]
    with RecordWriter(path, {"by": "test"}) as rec:
        for f in frames:
            rec.write(*f)
    got = [(r.time_us, r.transport, r.source, r.payload) for r in read_frames(path)]
    assert got == frames


def test_a_truncated_recording_is_refused_with_the_record_number(tmp_path: Path) -> None:
    path = tmp_path / "r.cfx"
    with RecordWriter(path) as rec:
        rec.write(1, "mqtt", "a", b"xyz")
        rec.write(2, "mqtt", "a", b"xyz" * 10)
    raw = gzip.decompress(path.read_bytes())
    (tmp_path / "cut.cfx").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(RecordingError, match=r"record 2 is truncated or damaged"):
        list(read_frames(tmp_path / "cut.cfx"))
    (tmp_path / "junk").write_bytes(b"hello\n")
    with pytest.raises(RecordingError, match="not a cityflux recording"):
        list(read_frames(tmp_path / "junk"))


def test_hj212_captures_replay_with_their_datatime_and_station(tmp_path: Path) -> None:
    path = tmp_path / "x.h212"
    path.write_bytes(
        b"##0139ST=32;CN=2011;PW=123456;MN=LD130133000015;CP=&&DataTime=20160824003817000;"
        b"B01-Rtd=36.91;011-Rtd=231.0,011-Flag=N;060-Rtd=1.803,060-Flag=N&&4980\r\n"
    )
    (rec,) = read_frames(path, prefix="city")
    assert rec.source == "city/up/air/LD130133000015/hj212"
    assert rec.time_us == 1_471_970_297_000_000  # 2016-08-24 00:38:17 Beijing = 16:38:17 UTC
    assert rec.payload.endswith(b"&&4980\r\n")


def test_quantiles_interpolate_within_buckets_like_prometheus() -> None:
    before = {0.1: 0.0, 0.5: 0.0, 1.0: 0.0, float("inf"): 0.0}
    after = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantiles(before, after, (0.5, 0.95, 0.99)) == {"p50": 0.1, "p95": 0.75, "p99": 0.95}
    assert quantiles(before, before, (0.5,)) is None
    assert quantiles(None, after, (0.5,)) is None


def test_max_age_is_read_from_a_503_response() -> None:
    # 5.03, token 'ab', Max-Age (option 14) = 7; then a payload
    msg = bytes([0x62, 0xA3, 0, 1]) + b"ab" + bytes([0xD1, 1, 7]) + b"\xffbusy"
    assert max_age_s(msg) == 7
    assert max_age_s(bytes([0x60, 0xA3, 0, 1])) == 60
