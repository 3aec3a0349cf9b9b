"""The shipped example rule files, each through ``cityflux rules test`` against frames that
must fire it and frames that must not (with a devices file where rules read the registry)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cityflux.cli import app
from decoders.gbt32960 import frame as gbt_frame
from decoders.gbt32960 import realtime_data
from decoders.hj212 import frame as hj212_frame
from decoders.jt808 import frame as jt808_frame
from decoders.jt808 import location_body
from decoders.streetlight import encode_frame as streetlight_frame

EXAMPLES = Path(__file__).parents[2] / "alerts" / "examples"


def run(
    tmp_path: Path, rules: str, fmt: str, frames: list[str], *extra: str
) -> list[dict[str, Any]]:
    src = tmp_path / "frames.txt"
    src.write_text("\n".join(frames) + "\n")
    result = CliRunner().invoke(
        app, ["rules", "test", "--rules", str(EXAMPLES / rules), "-f", fmt, *extra, str(src)]
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def devices(tmp_path: Path, text: str) -> list[str]:
    f = tmp_path / "devices.csv"
    f.write_text(text)
    return ["--devices", str(f)]


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(e["rule"], e["device"], e["state"], e["at"]) for e in events]


def test_air_quality_aqi_fires_after_two_polluted_hours_only(tmp_path: Path) -> None:
    def hourly(mn: str, hour: int, pm25: float) -> str:
        cp = (
            f"DataTime=20260101{hour:02d}0000;a34004-Avg={pm25},a34004-Flag=N;"
            "a21004-Avg=40,a21004-Flag=N;a21005-Avg=0.6,a21005-Flag=N"
        )
        return hj212_frame(f"ST=22;CN=2061;PW=1;MN={mn};Flag=4;CP=&&{cp}&&").decode().strip()

    frames = [hourly("ST-HAZE", h, 160.0) for h in range(8, 11)]  # IAQI 210, category 5
    frames += [hourly("ST-CLEAN", h, 40.0) for h in range(8, 11)]
    frames += [hourly("ST-SHORT", 8, 160.0), hourly("ST-SHORT", 9, 60.0)]  # one bad hour
    events = run(tmp_path, "air-quality.yaml", "hj212", frames)
    assert brief(events) == [
        ("pm25-high", "ST-HAZE", "raised", "2026-01-01T01:00:00Z"),  # > 75 for 10 min
        ("aqi-unhealthy", "ST-HAZE", "raised", "2026-01-01T02:00:00Z"),
    ]
    assert events[1]["value"] == 210.0  # the AQI


def _lamp(imei: int, when: datetime, on: bool, faults: int = 0) -> str:
    return streetlight_frame(
        imei,
        int(when.timestamp()),
        1,
        voltage=230,
        current=0.4 if on else 0.0,
        power=90 if on else 0,
        energy_kwh=1.0,
        dimming=100 if on else 0,
        lamp_on=on,
        faults=faults,
    ).hex()


def test_streetlights_burning_in_daylight_and_dark_at_night(tmp_path: Path) -> None:
    lit, dark, unplaced = 861000000000010, 861000000000011, 861000000000012
    reg = devices(
        tmp_path,
        f"external_id,lat,lon\n{lit},22.54,114.06\n{dark},22.54,114.06\n",
    )
    frames = []
    for minute in range(0, 50, 10):  # Shenzhen, 2026-06-21
        noon = datetime(2026, 6, 21, 4, minute, tzinfo=UTC)  # 12:xx local: daylight
        night = datetime(2026, 6, 21, 15, minute, tzinfo=UTC)  # 23:xx local
        frames += [_lamp(lit, noon, True), _lamp(dark, night, False)]
        frames += [_lamp(lit, night, True), _lamp(unplaced, noon, True)]
        frames += [_lamp(unplaced, night, False)]
    events = run(tmp_path, "streetlights.yaml", "streetlight", sorted(frames), "--hex", *reg)
    got = {(r, d, s, at) for r, d, s, at in brief(events)}
    assert got == {
        ("lamp-on-in-daylight", str(lit), "raised", "2026-06-21T04:30:00Z"),
        ("lamp-on-in-daylight", str(lit), "cleared", "2026-06-21T15:00:00Z"),
        ("lamp-off-at-night", str(dark), "raised", "2026-06-21T15:30:00Z"),
    }


def test_traffic_speeding_congestion_and_watchlist(tmp_path: Path) -> None:
    reg = devices(
        tmp_path,
        "external_id,road,road_km\nG-01,G4,10.0\nG-02,G4,15.0\nG-10,S1,3.0\nG-11,S1,5.0\n",
    )

    def read(reader: str, epc: str, at: datetime, plate: str | None = None) -> str:
        ev: dict[str, Any] = {"reader": reader, "epc": epc, "first_seen": at.isoformat()}
        if plate:
            ev["plate"] = plate
        return json.dumps(ev)

    t = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    s = 1.0

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(t.timestamp() + seconds * s, UTC)

    frames = [
        read("G-01", "A0001", at(0)), read("G-02", "A0001", at(120)),  # 5 km/120 s = 150 km/h
        read("G-01", "A0002", at(0)), read("G-02", "A0002", at(200)),  # 90 km/h on G4: fine
        read("G-10", "A0003", at(0)), read("G-11", "A0003", at(60)),  # 2 km/60 s = 120 > 80
        read("G-01", "E28011606000020D6AF1F0A1", at(300)),  # watch-listed tag
        read("G-02", "A0009", at(310), plate="粤B12345"),  # watch-listed plate
    ]  # fmt: skip
    for i in range(6):  # a jam on S1: 2 km in 250 s (free flow 80 s); tag ids are hex
        frames += [
            read("G-10", f"B000{i}", at(1000 + 20 * i)),
            read("G-11", f"B000{i}", at(1250 + 20 * i)),
        ]
    events = run(tmp_path, "traffic.yaml", "tagread-json", frames, *reg)
    got = [(r, d, s) for r, d, s, _ in brief(events)]
    assert got == [
        ("section-speeding", "A0003", "raised"),  # 08:01
        ("section-speeding", "A0001", "raised"),  # 08:02
        ("watchlisted-vehicle", "E28011606000020D6AF1F0A1", "raised"),
        ("watchlisted-vehicle", "粤B12345", "raised"),
        ("section-congestion", "G-10>G-11", "raised"),
    ]
    speeding = events[1]
    assert round(speeding["value"], 1) == 150.0
    assert speeding["details"]["road"] == "G4"


def _position(phone: str, local: str, lat: float, lon: float, alarm: int = 0) -> str:
    body = location_body(lat, lon, time=local, speed_kmh=40, alarm=alarm)
    return jt808_frame(0x0200, phone, 1, body).hex()


def test_vehicles_geofence_in_hours_and_alarm_bits(tmp_path: Path) -> None:
    reg = devices(
        tmp_path,
        "external_id,kind\n13912345601,hazmat\n13912345602,hazmat\n13912345603,taxi\n",
    )
    frames = []
    for minute in (0, 1, 2):
        inside = (22.54, 114.05)
        frames += [
            _position("013912345601", f"26010110{minute:02d}00", *inside),  # 10:00 local: in hours
            _position("013912345602", f"26010123{minute:02d}00", *inside),  # 23:00: out of hours
            _position("013912345603", f"26010110{minute:02d}00", *inside),  # not hazmat
        ]
    frames.append(_position("013912345603", "260101100500", 22.6, 114.2, alarm=0b11))
    frames.append(_position("013912345603", "260101100600", 22.6, 114.2, alarm=0b10))
    events = run(tmp_path, "vehicles.yaml", "jt808", frames, "--hex", *reg)
    assert brief(events) == [
        ("hazmat-in-city-centre", "13912345601", "raised", "2026-01-01T02:01:00Z"),
        ("vehicle-emergency", "13912345603", "raised", "2026-01-01T02:05:00Z"),
        ("vehicle-overspeed", "13912345603", "raised", "2026-01-01T02:05:00Z"),
        ("vehicle-emergency", "13912345603", "cleared", "2026-01-01T02:06:00Z"),
    ]
    assert events[0]["value"] is None  # a geofence has no default value (alerts/README.md)


def test_water_level_against_each_stations_warning_line(tmp_path: Path) -> None:
    reg = devices(
        tmp_path,
        'external_id,install\nWL-1,"{""warning_level_m"": 3.2}"\n'
        'WL-2,"{""warning_level_m"": 5.0}"\n',
    )
    t0 = int(datetime(2026, 7, 1, tzinfo=UTC).timestamp())

    def level(dev: str, minute: int, v: float) -> str:
        return json.dumps(
            [{"bn": dev, "n": "water_level", "u": "m", "v": v, "t": t0 + minute * 60}]
        )

    frames = [level("WL-1", m, v) for m, v in ((0, 3.0), (10, 3.25), (15, 3.3), (20, 3.1))]
    # below its own line (5.0) and rising slowly (6 cm an hour)
    frames += [level("WL-2", m, v) for m, v in ((0, 4.0), (10, 4.01), (20, 4.02))]
    events = run(tmp_path, "water-level.yaml", "senml-json", frames, *reg)
    assert brief(events) == [
        ("water-rising-fast", "WL-1", "raised", "2026-07-01T00:10:00Z"),  # 25 cm in 10 min
        ("water-above-warning-line", "WL-1", "raised", "2026-07-01T00:15:00Z"),
        ("water-above-warning-line", "WL-1", "cleared", "2026-07-01T00:20:00Z"),
        ("water-rising-fast", "WL-1", "cleared", "2026-07-01T00:20:00Z"),
    ]


def test_ev_alarm_level_two_fires_and_level_one_does_not(tmp_path: Path) -> None:
    frames = [gbt_frame(0x02, "LSVAU2180N0000001", realtime_data()).hex()]
    events = run(tmp_path, "ev.yaml", "gbt32960", frames, "--hex")
    assert [(e["rule"], e["device"], e["value"]) for e in events] == [
        ("ev-alarm-level", "LSVAU2180N0000001", 2.0)
    ]


def test_offline_devices_from_their_profiles_report_interval(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "profiles:\n"
        "  - {name: env, kind: env, decoder: senml-json, report_interval_s: 60, offline_after: 3}\n"
        "  - {name: ev, kind: ev, decoder: senml-json, report_interval_s: 10}\n"
    )
    reg = devices(tmp_path, "external_id,profile\nS-1,env\nS-2,env\nV-1,ev\n")
    t0 = int(datetime(2026, 7, 1, tzinfo=UTC).timestamp())

    def reading(dev: str, second: int) -> str:
        return json.dumps([{"bn": dev, "n": "temperature", "v": 20, "t": t0 + second}])

    # S-1 reports every minute; S-2 stops after its first report; V-1 stops after 5 s
    frames = [reading("S-1", s) for s in range(0, 600, 60)] + [reading("S-2", 0)]
    frames += [reading("V-1", 0), reading("V-1", 5)]
    events = run(
        tmp_path, "devices.yaml", "senml-json", sorted(frames, key=lambda f: json.loads(f)[0]["t"]),
        *reg, "--profiles", str(profiles),
    )  # fmt: skip
    assert brief(events) == [
        ("device-offline", "V-1", "raised", "2026-07-01T00:00:35Z"),  # 3 × 10 s (default 3)
        ("ev-offline-fast", "V-1", "raised", "2026-07-01T00:00:35Z"),  # 3 × 10 s after 5 s
        ("device-offline", "S-2", "raised", "2026-07-01T00:03:00Z"),  # 3 × 60 s
    ]
