"""Each kind of rule on hand-made rows: what must fire fires, at the frame time that did it,
and what must not fire does not."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astral import LocationInfo
from astral.sun import sun

from alerts import aqi as hj633
from alerts.engine import Engine
from alerts.rules import load_rules
from alerts.solar import is_daylight, sun_elevation
from core.frames import TableRows
from core.yamlfile import DocumentError
from decoders.registry import load_registry
from decoders.tables import PARKING_SPACE_STATUS

TABLES = {t.name: t for t in load_registry().tables()}
EXAMPLES = Path(__file__).parents[2] / "alerts" / "examples"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
MIN = 60_000_000


def rows(table: str, devices: list[str], ids: list[int], **cols: list[Any]) -> TableRows:
    """Rows of ``table`` (columns not given are zeros)."""
    spec = TABLES[table]
    n = len(devices)
    data: dict[str, np.ndarray] = {}
    for c in spec.columns:
        dtype = np.dtype("S32") if c.type.value == "text" else None
        if c.name in cols:
            data[c.name] = np.array(cols[c.name], dtype=dtype)
        elif c.name == "device_id":
            data[c.name] = np.array(ids, dtype=np.int32)
        else:
            data[c.name] = np.zeros(n, dtype=dtype or np.float64)
    return TableRows(
        table, data, np.array([d.encode() for d in devices]), np.arange(n, dtype=np.int32)
    )


def engine(tmp_path: Path, text: str) -> Engine:
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    return Engine(load_rules(f, TABLES))


def ev(events: list[Any]) -> list[tuple[str, str | None, str, int]]:
    return [(e.rule, e.subject, e.state, (e.at_us - T0) // MIN) for e in events]


def test_rate_of_change_per_minute_carries_across_batches(tmp_path: Path) -> None:
    eng = engine(
        tmp_path,
        """
rules:
  - name: water-rising
    kind: rate
    table: env_readings
    where: metric == "water_level"
    per: minute
    when: rate > 0.05
    clear: rate < 0.01
""",
    )
    t = [T0 + m * MIN for m in (0, 1, 2)]
    first = rows(
        "env_readings",
        ["W1"] * 3,
        [1] * 3,
        time=t,
        metric=[b"water_level"] * 3,
        value=[1.00, 1.01, 1.02],
    )
    assert eng.evaluate({"env_readings": first}) == []
    # +0.10 m in one minute (the previous value comes from the last batch), then flat
    t2 = [T0 + m * MIN for m in (3, 4, 5)]
    second = rows(
        "env_readings",
        ["W1"] * 3,
        [1] * 3,
        time=t2,
        metric=[b"water_level"] * 3,
        value=[1.12, 1.125, 1.125],
    )
    got = eng.evaluate({"env_readings": second})
    assert ev(got) == [("water-rising", "W1", "raised", 3), ("water-rising", "W1", "cleared", 4)]
    assert got[0].value == pytest.approx(0.10)


def test_stale_value_raises_after_the_same_value_for_long_enough(tmp_path: Path) -> None:
    eng = engine(
        tmp_path,
        """
rules:
  - name: stuck-sensor
    kind: stale
    table: env_readings
    where: metric == "temperature"
    after: 30m
""",
    )
    vals = [20.0, 21.0] + [21.0] * 6 + [22.0]
    mins = [0, 10, 20, 25, 30, 35, 40, 45, 50]
    r = rows(
        "env_readings",
        ["S1"] * 9,
        [1] * 9,
        time=[T0 + m * MIN for m in mins],
        metric=[b"temperature"] * 9,
        value=vals,
    )
    # 21.0 since minute 10: unchanged for 30 min at minute 40; cleared when it moves at 50
    assert ev(eng.evaluate({"env_readings": r})) == [
        ("stuck-sensor", "S1", "raised", 40),
        ("stuck-sensor", "S1", "cleared", 50),
    ]


def test_geofence_with_hours_in_local_time(tmp_path: Path) -> None:
    eng = engine(
        tmp_path,
        """
timezone: Asia/Shanghai
rules:
  - name: hazmat-in-centre
    kind: geofence
    polygon: [[114.0, 22.5], [114.1, 22.5], [114.1, 22.6], [114.0, 22.6]]
    hours: "07:00-22:00"
    for: 2m
""",
    )
    # 23:00 UTC on Dec 31 = 07:00 in Shanghai
    base = T0 - 60 * MIN
    lat = [22.55, 22.55, 22.55, 22.70, 22.55]
    lon = [114.05, 114.05, 114.05, 114.05, 114.05]
    mins = [-5, 0, 2, 4, 6]  # 06:55 (outside hours), 07:00, 07:02 (raise), left, back in
    r = rows(
        "vehicle_positions",
        ["V1"] * 5,
        [7] * 5,
        time=[base + m * MIN for m in mins],
        lat=lat,
        lon=lon,
    )
    got = [(s, st, m + 60) for _, s, st, m in ev(eng.evaluate({"vehicle_positions": r}))]
    assert got == [("V1", "raised", 2), ("V1", "cleared", 4)]


def test_aqi_of_hj212_hourly_values(tmp_path: Path) -> None:
    eng = engine(
        tmp_path,
        """
rules:
  - name: aqi-unhealthy
    kind: aqi
    level: 4
    for: 1h
""",
    )
    factors, values, times = [], [], []
    for h, pm25 in enumerate([40, 160, 170, 180, 60]):  # IAQI of 160 µg/m³ PM2.5 is 210
        for code, v in (("a34004", pm25), ("a21004", 50.0), ("a21005", 0.8)):
            factors.append(code.encode())
            values.append(v)
            times.append(T0 + h * 60 * MIN)
    n = len(values)
    r = rows(
        "hj212_readings",
        ["ST1"] * n,
        [3] * n,
        time=times,
        factor=factors,
        value=values,
        field=[b"Avg"] * n,
        cn=[2061] * n,
    )
    got = eng.evaluate({"hj212_readings": r})
    assert [(e.state, (e.at_us - T0) // MIN, e.value) for e in got] == [
        ("raised", 120, 220.0),  # category 5 since hour 1, for an hour
        ("cleared", 240, 82.0),
    ]


def test_hj633_iaqi_matches_published_vectors() -> None:
    # caiyunapp/aqi-hub tests/aqi_cn/test_cal_aqi_cn.py (hourly): each at IAQI 50, then high
    low = {"pm2_5": 35, "pm10": 50, "so2": 150, "no2": 100, "co": 5, "o3": 160}
    high = {"pm2_5": 250, "pm10": 350, "so2": 650, "no2": 700, "co": 35, "o3": 300}
    want = {"pm2_5": 300, "pm10": 200, "so2": 150, "no2": 150, "co": 150, "o3": 150}
    for p in hj633.POLLUTANTS:
        got = hj633.iaqi(p, np.array([low[p], high[p], -1.0]))
        assert got[:2].tolist() == [50.0, want[p]], p
        assert np.isnan(got[2])
    assert np.isnan(hj633.iaqi("so2", np.array([801.0]))[0])  # not indexed from 1-hour data
    assert hj633.iaqi("pm2_5", np.array([36.0, 600.0])).tolist() == [52.0, 500.0]
    assert hj633.category(np.array([50.0, 51.0, 150.0, 201.0, 301.0])).tolist() == [1, 2, 3, 5, 6]


def test_sun_elevation_agrees_with_astral_on_sunrise_and_sunset() -> None:
    city = LocationInfo("Shenzhen", "China", "Asia/Shanghai", 22.54, 114.06)
    for day in (
        datetime(2026, 3, 20, tzinfo=UTC),
        datetime(2026, 6, 21, tzinfo=UTC),
        datetime(2026, 12, 21, tzinfo=UTC),
    ):
        s = sun(city.observer, date=day.date())
        for moment in (s["sunrise"], s["sunset"]):
            us = int(moment.timestamp() * 1e6)
            minute = 60_000_000
            t = np.array([us - minute, us + minute], dtype=np.int64)
            el = sun_elevation(t, np.full(2, city.latitude), np.full(2, city.longitude))
            # a minute either side of astral's sunrise/sunset, the sun crosses -0.833°
            assert (el[0] + 0.833) * (el[1] + 0.833) < 0, (day, moment, el)
    noon = np.array([int(datetime(2026, 6, 21, 4, 30, tzinfo=UTC).timestamp() * 1e6)])
    assert is_daylight(noon, np.array([22.54]), np.array([114.06])).tolist() == [True]


def test_a_lamp_on_in_daylight_uses_the_registry_location(tmp_path: Path) -> None:
    eng = engine(
        tmp_path,
        """
rules:
  - name: lamp-on-in-daylight
    table: streetlight_status
    when: lamp_on and daylight
    for: 10m
""",
    )
    eng.attributes.add([{"id": 5, "external_id": "L5", "lat": 22.54, "lon": 114.06}])
    noon_local = T0 + 4 * 60 * MIN  # 12:00 in Shenzhen
    r = rows(
        "streetlight_status",
        ["L5"] * 3 + ["L6"] * 3,
        [5] * 3 + [6] * 3,
        time=[noon_local + m * MIN for m in (0, 5, 10)] * 2,
        lamp_on=[True] * 6,
    )
    # L6 has no location in the registry: never daylight, never an alert
    assert ev(eng.evaluate({"streetlight_status": r})) == [
        ("lamp-on-in-daylight", "L5", "raised", 250)
    ]


def test_absence_raises_on_the_clock_and_clears_on_the_next_frame(tmp_path: Path) -> None:
    eng = engine(
        tmp_path,
        """
rules:
  - name: offline
    kind: absence
    after: 3x
""",
    )
    eng.attributes.add(
        [
            {"id": 1, "external_id": "E1", "report_interval_s": 600},
            {"id": 2, "external_id": "E2", "report_interval_s": 60},
        ]
    )
    r = rows(
        "env_readings", ["E1", "E2"], [1, 2], time=[T0, T0], metric=[b"t", b"t"], value=[1.0, 1.0]
    )
    assert eng.evaluate({"env_readings": r}) == []
    assert eng.tick(T0 + 2 * MIN) == []
    got = eng.tick(T0 + 5 * MIN)  # E2: 3 × 60 s silent
    assert [(e.device_id, e.state, (e.at_us - T0) // MIN) for e in got] == [(2, "raised", 3)]
    assert eng.tick(T0 + 6 * MIN) == []  # raised once
    back = rows("env_readings", ["E2"], [2], time=[T0 + 7 * MIN], metric=[b"t"], value=[1.0])
    got = eng.evaluate({"env_readings": back})
    assert [(e.device_id, e.state, (e.at_us - T0) // MIN) for e in got] == [(2, "cleared", 7)]
    # silent again: E2 three minutes after its last frame, E1 three report intervals after
    got = eng.tick(T0 + 31 * MIN)
    assert [(e.device_id, e.state, (e.at_us - T0) // MIN) for e in got] == [
        (2, "raised", 10),
        (1, "raised", 30),
    ]


def _gantries(eng: Engine) -> None:
    eng.attributes.add(
        [
            {"id": 10, "external_id": "G-A", "road": "G4", "road_km": 10.0},
            {"id": 11, "external_id": "G-B", "road": "G4", "road_km": 15.0},
            {"id": 12, "external_id": "G-X", "road": "S1", "road_km": 16.0},
        ]
    )


def test_section_speed_between_gantries(tmp_path: Path) -> None:
    eng = engine(
        tmp_path,
        """
rules:
  - name: speeding
    kind: section_speed
    limit_kmh: 100
    limits: {S1: 60}
""",
    )
    _gantries(eng)
    sec = 1_000_000
    reads = [
        ("FAST", 10, 0),
        ("FAST", 11, 150 * sec),  # 5 km in 150 s = 120 km/h
        ("SLOW", 10, 0),
        ("SLOW", 11, 240 * sec),  # 75 km/h
        ("OTHER", 10, 0),
        ("OTHER", 12, 60 * sec),  # another road: no section
    ]
    r = rows(
        "vehicle_tag_reads",
        [f"G{g}" for _, g, _ in reads],
        [g for _, g, _ in reads],
        time=[T0 + t for _, _, t in reads],
        epc=[e.encode() for e, _, _ in reads],
    )
    got = eng.evaluate({"vehicle_tag_reads": r})
    assert [(e.subject, e.state, round(e.value or 0, 1)) for e in got] == [
        ("FAST", "raised", 120.0)
    ]
    assert got[0].details == {
        "from": "G-A",
        "to": "G-B",
        "road": "G4",
        "distance_km": 5.0,
        "travel_s": 150.0,
        "limit_kmh": 100.0,
    }
    # cleared one hour (clear_after) after its last speeding section
    assert eng.tick(T0 + 30 * MIN) == []
    assert eng.tick(T0 + 62 * MIN) == []  # the speeding section ended at 2.5 min
    assert [(e.subject, e.state) for e in eng.tick(T0 + 63 * MIN)] == [("FAST", "cleared")]


def test_congestion_from_median_travel_time(tmp_path: Path) -> None:
    eng = engine(
        tmp_path,
        """
rules:
  - name: jam
    kind: congestion
    window: 10m
    free_flow_kmh: 100      # 5 km: 180 s
    factor: 2
    clear_factor: 1.5
    min_samples: 3
""",
    )
    _gantries(eng)
    sec = 1_000_000
    reads = []
    for i in range(4):  # four vehicles taking 400 s (2.2 × free flow)
        reads += [(f"T{i}", 10, i * 30 * sec), (f"T{i}", 11, (i * 30 + 400) * sec)]
    r = rows(
        "vehicle_tag_reads",
        ["g"] * len(reads),
        [g for _, g, _ in reads],
        time=[T0 + t for _, _, t in reads],
        epc=[e.encode() for e, _, _ in reads],
    )
    got = eng.evaluate({"vehicle_tag_reads": r})
    assert [(e.subject, e.state, round(e.value or 0, 2)) for e in got] == [
        ("G-A>G-B", "raised", 2.22)
    ]
    reads = []
    for i in range(4, 10):  # the jam dissolves: 200 s
        reads += [(f"T{i}", 10, (600 + i * 30) * sec), (f"T{i}", 11, (800 + i * 30) * sec)]
    r = rows(
        "vehicle_tag_reads",
        ["g"] * len(reads),
        [g for _, g, _ in reads],
        time=[T0 + t for _, _, t in reads],
        epc=[e.encode() for e, _, _ in reads],
    )
    assert [(e.subject, e.state) for e in eng.evaluate({"vehicle_tag_reads": r})] == [
        ("G-A>G-B", "cleared")
    ]


def test_watchlist_matches_tags_and_vins_and_reloads(tmp_path: Path) -> None:
    listed = tmp_path / "stolen.txt"
    listed.write_text("# stolen vehicles\nE2001\nLSVAU2180N0000009\n")
    eng = engine(
        tmp_path,
        """
rules:
  - name: stolen
    kind: watchlist
    list: stolen.txt
    severity: critical
""",
    )
    tags = rows(
        "vehicle_tag_reads", ["G1", "G1"], [1, 1], time=[T0, T0 + MIN], epc=[b"E1000", b"E2001"]
    )
    evs = rows("ev_status", ["LSVAU2180N0000009"], [9], time=[T0 + 2 * MIN])
    got = eng.evaluate({"vehicle_tag_reads": tags, "ev_status": evs})
    assert [(e.subject, e.state, e.device_id) for e in got] == [
        ("E2001", "raised", 1),
        ("LSVAU2180N0000009", "raised", 9),
    ]
    listed.write_text("E1000\n")
    rt = eng.runtimes["stolen"]
    assert rt.watchlist is not None
    rt.watchlist.mtime = -1  # as if the file's time changed
    assert rt.watchlist.reload()
    tags = rows("vehicle_tag_reads", ["G1"], [1], time=[T0 + 3 * MIN], epc=[b"E1000"])
    assert [(e.subject, e.state) for e in eng.evaluate({"vehicle_tag_reads": tags})] == [
        ("E1000", "raised")
    ]


def test_rule_errors_name_the_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(
        "rules:\n  - name: x\n    kind: rate\n    table: env_readings\n    per: week\n"
        "    when: rate > 1\n"
    )
    with pytest.raises(DocumentError) as err:
        load_rules(f, TABLES)
    assert f"{f}:5: rules[0].per: Input should be 'second', 'minute' or 'hour'" in str(err.value)
    f.write_text("rules:\n  - name: x\n    kind: teleport\n")
    with pytest.raises(DocumentError) as err:
        load_rules(f, TABLES)
    assert f"{f}:2: rules[0].kind: unknown kind" in str(err.value)
    f.write_text("rules:\n  - name: x\n    kind: geofence\n    zone: nowhere.geojson\n")
    with pytest.raises(DocumentError) as err:
        load_rules(f, TABLES)
    assert "rules[0].zone: no such file" in str(err.value)
    f.write_text("timezone: Mars/Olympus\nrules: []\n")
    with pytest.raises(DocumentError) as err:
        load_rules(f, TABLES)
    assert f"{f}:1: timezone: unknown time zone 'Mars/Olympus'" in str(err.value)


RULES = """
rules:
  - name: no2-high
    table: env_readings
    where: metric == "no2"
    when: value > 75
    for: 10m
    clear: value < 60
"""


def _no2(dev: str, ident: int, minutes: list[int], value: float) -> TableRows:
    n = len(minutes)
    return rows(
        "env_readings",
        [dev] * n,
        [ident] * n,
        time=[T0 + m * MIN for m in minutes],
        metric=[b"no2"] * n,
        value=[value] * n,
    )


def test_a_snapshot_resumes_pending_and_open_alerts(tmp_path: Path) -> None:
    eng = engine(tmp_path, RULES)
    assert eng.evaluate({"env_readings": _no2("A", 1, [0, 5], 90.0)}) == []  # pending since 0
    saved = {
        k: (eng.runtimes[k].rule.definition if k in eng.runtimes else "", v)
        for k, v in eng.snapshot().items()
    }
    again = engine(tmp_path, RULES)
    assert again.restore(saved) == ["no2-high"]
    got = again.evaluate({"env_readings": _no2("A", 1, [10], 90.0)})
    assert ev(got) == [("no2-high", "A", "raised", 10)]  # pending since minute 0, not 10
    # a changed definition starts fresh
    changed = engine(tmp_path, RULES.replace("for: 10m", "for: 20m"))
    assert changed.restore(saved) == []


def test_the_alerts_table_decides_what_is_open_after_a_restart(tmp_path: Path) -> None:
    eng = engine(tmp_path, RULES)
    eng.reconcile("no2-high", [(1, T0, 90.0, "A")])  # open in the table, not in memory
    assert eng.active("no2-high").tolist() == [1]
    # it is not raised again; older rows than its raise are late; it clears normally
    assert eng.evaluate({"env_readings": _no2("A", 1, [1, 2, 12], 90.0)}) == []
    got = eng.evaluate({"env_readings": _no2("A", 1, [20], 10.0)})
    assert [(e.state, e.raised_at_us) for e in got] == [("cleared", T0)]


def test_hot_reload_keeps_unchanged_rules_and_clears_removed_ones(tmp_path: Path) -> None:
    eng = engine(
        tmp_path,
        RULES
        + """
  - name: pm-high
    table: env_readings
    where: metric == "pm2_5"
    when: value > 100
""",
    )
    eng.evaluate({"env_readings": _no2("A", 1, [0, 10], 90.0)})
    pm = rows("env_readings", ["B"], [2], time=[T0], metric=[b"pm2_5"], value=[150.0])
    assert ev(eng.evaluate({"env_readings": pm})) == [("pm-high", "B", "raised", 0)]
    f = tmp_path / "rules.yaml"
    f.write_text(RULES)
    removed = eng.replace(load_rules(f, TABLES), T0 + 30 * MIN)
    assert [(e.rule, e.device_id, e.state, e.details) for e in removed] == [
        ("pm-high", 2, "cleared", {"reason": "rule removed"})
    ]
    assert eng.active("no2-high").tolist() == [1]  # kept its open alert


def test_raise_clear_raise_in_one_batch_pairs_each_clear_with_its_raise(tmp_path: Path) -> None:
    eng = engine(tmp_path, RULES.replace("for: 10m", "for: 0s"))
    n = 4
    r = rows(
        "env_readings",
        ["A"] * n,
        [1] * n,
        time=[T0 + m * MIN for m in range(n)],
        metric=[b"no2"] * n,
        value=[90.0, 10.0, 95.0, 5.0],
    )
    got = eng.evaluate({"env_readings": r})
    assert [(e.state, (e.at_us - T0) // MIN, (e.raised_at_us - T0) // MIN, e.raised_value)
            for e in got] == [
        ("raised", 0, 0, 90.0),
        ("cleared", 1, 0, 90.0),
        ("raised", 2, 2, 95.0),
        ("cleared", 3, 2, 95.0),
    ]  # fmt: skip


def _space_status(
    devices: list[str], ids: list[int], minutes: list[int], **cols: list[Any]
) -> TableRows:
    spec = PARKING_SPACE_STATUS
    n = len(devices)
    data: dict[str, np.ndarray] = {"time": T0 + np.array(minutes, dtype=np.int64) * MIN}
    for c in spec.columns:
        if c.name in cols:
            data[c.name] = np.array(cols[c.name], dtype="S16" if c.type.value == "text" else None)
        elif c.name == "device_id":
            data[c.name] = np.array(ids, dtype=np.int32)
        elif c.name != "time":
            data[c.name] = np.zeros(n)
    return TableRows(
        spec.name, data, np.array([d.encode() for d in devices]), np.arange(n, dtype=np.int32)
    )


def test_a_parking_lot_full_for_five_minutes_raises_once_per_lot(tmp_path: Path) -> None:
    eng = Engine(load_rules(EXAMPLES / "parking.yaml", TABLES))
    # lot P1 (capacity 20) fills: 19 at minute 0, still 19 at minute 4, 20 at minute 6; lot P2
    # touches 95 % for a minute only
    batches = [
        (["s1", "s2", "s9"], [1, 2, 9], [0, 0, 0], ["P1", "P1", "P2"], [19, 19, 19], [20, 20, 20]),
        (["s3", "s9"], [3, 9], [1, 1], ["P1", "P2"], [19, 17], [20, 20]),
        (["s4"], [4], [4], ["P1"], [19], [20]),
        (["s5", "s9"], [5, 9], [6, 6], ["P1", "P2"], [20, 16], [20, 20]),
        (["s5"], [5], [9], ["P1"], [17], [20]),
    ]
    events = []
    for devs, ids, minutes, lots, occupied, capacity in batches:
        r = _space_status(
            devs, ids, minutes, lot=lots, lot_occupied=occupied, lot_capacity=capacity,
            occupied_pct=[100.0 * o / c for o, c in zip(occupied, capacity, strict=True)],
        )  # fmt: skip
        events += eng.evaluate({PARKING_SPACE_STATUS.name: r})
    assert [(*e, ev.value) for e, ev in zip(ev(events), events, strict=True)] == [
        ("parking-lot-full", "P1", "raised", 6, 100.0),
        ("parking-lot-full", "P1", "cleared", 9, 85.0),
    ]
    assert events[0].details == {"occupied": 20, "capacity": 20}


def test_stuck_and_flapping_space_sensors_raise_on_their_own_space(tmp_path: Path) -> None:
    eng = Engine(load_rules(EXAMPLES / "parking.yaml", TABLES))
    day = 86_400.0
    r = _space_status(
        ["s1", "s2", "s3"], [1, 2, 3], [0, 0, 0], lot=["P1"] * 3,
        unchanged_s=[3.5 * day, 3.5 * day, 60.0], lot_changes=[12, 4, 30],
        flaps=[0, 0, 7], lot_capacity=[20] * 3, occupied_pct=[50.0] * 3,
    )  # fmt: skip
    got = ev(eng.evaluate({PARKING_SPACE_STATUS.name: r}))
    assert sorted(got) == [
        ("parking-sensor-flapping", "s3", "raised", 0),
        ("parking-sensor-stuck", "s1", "raised", 0),
    ]


def test_frame_loss_raises_above_its_ratio_and_clears_below_half_of_it(tmp_path: Path) -> None:
    from alerts.frameloss import FrameLossRuntime

    eng = engine(
        tmp_path,
        """
rules:
  - name: frames-lost
    kind: frame_loss
    window: 2h
    above: 0.1
    min_frames: 20
""",
    )
    rt = eng.runtimes["frames-lost"]
    assert isinstance(rt, FrameLossRuntime)
    assert (rt.spec.hours, rt.spec.clear_at) == (2, 0.05)
    ids = np.array([1, 2, 3], dtype=np.int64)
    # device 1: 20 % lost; 2: 5 % lost; 3: 50 % but only 10 frames counted (too few to judge)
    got = rt.judge(ids, np.array([80, 95, 5]), np.array([20, 5, 5]), T0)
    assert [(e.device_id, e.state, e.value, e.details) for e in got] == [
        (1, "raised", 0.2, {"received": 80, "missing": 20, "window_h": 2})
    ]
    assert rt.judge(ids, np.array([92, 95, 5]), np.array([8, 5, 5]), T0 + MIN) == []  # 8 %: open
    cleared = rt.judge(ids, np.array([96, 95, 5]), np.array([4, 5, 5]), T0 + 2 * MIN)
    assert [(e.device_id, e.state, e.value, e.raised_value) for e in cleared] == [
        (1, "cleared", 0.04, 0.2)
    ]
    again = rt.judge(ids[:1], np.array([10]), np.array([10]), T0 + 3 * MIN)
    assert [e.state for e in again] == ["raised"]
    gone = rt.judge(ids[:0], ids[:0], ids[:0], T0 + 4 * MIN)  # nothing counted in the window
    assert [(e.state, e.details) for e in gone] == [
        ("cleared", {"reason": "nothing counted in the window"})
    ]
    assert eng.evaluate({}) == []
    assert eng.tick(T0) == []


def test_frame_loss_rule_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match=r"rules\[0\]\.above: Input should be less than 1"):
        engine(tmp_path, "rules:\n  - name: x\n    kind: frame_loss\n    above: 5\n")
