"""``cityflux rules test`` keeps a frame-time clock: absence and ``clear_after`` fall due as
the frames' time passes them, wherever the input's batches end."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from alerts import offline
from cityflux.cli import app

EXAMPLES = Path(__file__).parents[2] / "alerts" / "examples"
T8 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
LISTED = "E28011606000020D6AF1F0A1"  # in alerts/examples/watchlist.txt


def run(tmp_path: Path, rules: Path, fmt: str, frames: list[str], *extra: str) -> list[Any]:
    src = tmp_path / "frames.txt"
    src.write_text("\n".join(frames) + "\n")
    result = CliRunner().invoke(
        app, ["rules", "test", "--rules", str(rules), "-f", fmt, *extra, str(src)]
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(e["rule"], e["device"], e["state"], e["at"]) for e in events]


def at(minutes: float) -> datetime:
    return T8 + timedelta(minutes=minutes)


def z(minutes: float) -> str:
    return at(minutes).isoformat().replace("+00:00", "Z")


def _station_args(tmp_path: Path) -> list[str]:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "profiles:\n"
        "  - {name: env, kind: env, decoder: senml-json, report_interval_s: 60,"
        " offline_after: 5}\n"
    )
    devices = tmp_path / "devices.csv"
    devices.write_text("external_id,profile\nS-1,env\n")
    return ["--devices", str(devices), "--profiles", str(profiles)]


def _reading(device: str, minute: float) -> str:
    return json.dumps(
        [{"bn": device, "n": "temperature", "v": 20, "t": int(at(minute).timestamp())}]
    )


def test_a_station_silent_between_two_reports_is_offline_then_back_in_frame_time(
    tmp_path: Path,
) -> None:
    # every minute 08:00-08:05, silent until 08:20, then every minute to 08:30
    frames = [_reading("S-1", m) for m in [*range(0, 6), *range(20, 31)]]
    args = _station_args(tmp_path)
    events = run(tmp_path, EXAMPLES / "devices.yaml", "senml-json", frames, *args)
    assert brief(events) == [
        ("device-offline", "S-1", "raised", z(10)),  # 08:05 + 5 × 60 s
        ("device-offline", "S-1", "cleared", z(20)),  # its next frame
    ]
    assert events[0]["value"] == 300.0  # the silence allowed, s


def test_a_watch_listed_tag_seen_twice_an_hour_apart_raises_and_clears_twice(
    tmp_path: Path,
) -> None:
    def read(epc: str, minute: float) -> str:
        return json.dumps({"reader": "G-01", "epc": epc, "first_seen": at(minute).isoformat()})

    frames = [read(f"A{m:04d}", m) for m in range(0, 121, 10)]  # other traffic to 10:00
    frames += [read(LISTED, 0), read(LISTED, 60)]
    frames.sort(key=lambda f: json.loads(f)["first_seen"])
    events = run(tmp_path, EXAMPLES / "traffic.yaml", "tagread-json", frames)
    assert brief(events) == [
        ("watchlisted-vehicle", LISTED, "raised", z(0)),
        ("watchlisted-vehicle", LISTED, "cleared", z(30)),  # clear_after: 30m
        ("watchlisted-vehicle", LISTED, "raised", z(60)),
        ("watchlisted-vehicle", LISTED, "cleared", z(90)),
    ]
    assert {e["value"] for e in events} == {None}  # a sighting carries no number
    assert events[1]["details"] == {"reason": "clear_after"}


@pytest.mark.parametrize("chunk", [1, 3, 7, 10_000])
def test_alert_events_do_not_depend_on_where_the_input_is_cut_into_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    frames = [_reading("S-1", m) for m in [*range(0, 6), *range(20, 31), *range(45, 47)]]
    frames += [_reading("S-2", m / 2) for m in range(0, 100)]  # not registered: never offline
    frames.sort(key=lambda f: json.loads(f)[0]["t"])
    monkeypatch.setattr(offline, "BATCH", chunk)
    args = _station_args(tmp_path)
    events = run(tmp_path, EXAMPLES / "devices.yaml", "senml-json", frames, *args)
    assert brief(events) == [
        ("device-offline", "S-1", "raised", z(10)),
        ("device-offline", "S-1", "cleared", z(20)),
        ("device-offline", "S-1", "raised", z(35)),
        ("device-offline", "S-1", "cleared", z(45)),
    ]
