"""The device-fleet simulator against a real service, broker, CoAP listener and database:
a mixed city with faults is accounted for frame by frame; loss, unregistered devices and
Ctrl-C show up in the report; record → replay and the HJ 212 corpus replay round-trip."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from decoders.registry import load_registry
from ingest.settings import Settings
from simulators.corpus import hj212_corpus_dir
from simulators.recording import read_frames
from simulators.run import FleetRun, Target
from simulators.scenario import Scenario
from simulators.session import replay_file, run_scenario
from storage.migrate import TimescaleMode, migrate
from tests.helpers import query, running, service_env, settings_for


def city(prefix: str, **overrides: Any) -> Scenario:
    """Every transport and QoS, six device models, all four kinds of fault; 20 s of device
    time sent as fast as the service takes it."""
    data: dict[str, Any] = {
        "name": "test-city",
        "seed": 7,
        "duration_s": 20,
        "speed": "max",
        "prefix": prefix,
        "groups": [
            {"name": "air", "model": "hj212-station", "count": 5, "interval_s": 5},
            {"name": "env", "model": "nbiot-env", "count": 200, "interval_s": 2, "qos": 0},
            {"name": "senml", "model": "nbiot-senml", "count": 50, "interval_s": 2,
             "transport": "coap"},
            {"name": "water", "model": "water-level", "count": 50, "interval_s": 2,
             "transport": "coap", "confirmable": False},
            {"name": "lights", "model": "streetlight", "count": 100, "interval_s": 2},
            {"name": "gantries", "model": "gantry", "count": 4, "interval_s": 1,
             "options": {"roads": 1, "flow_per_hour": 3600}},
            {"name": "evs", "model": "ev", "count": 50, "interval_s": 2},
        ],
        "faults": {"malformed": 0.01, "duplicates": 0.01, "late": 0.01, "late_s": 5},
    }  # fmt: skip
    data.update(overrides)
    return Scenario.model_validate(data)


def city_settings(pg_url: str, broker: Any, prefix: str, **sections: Any) -> Settings:
    return settings_for(
        pg_url, broker, prefix, coap={"mode": "open", "port": 0},
        pipeline={"flush_interval_ms": 50, "unknown_devices": "reject"}, **sections,
    )  # fmt: skip


async def simulate(settings: Settings, scenario: Scenario, **kw: Any) -> dict[str, Any]:
    """Run the scenario against a service running in this loop, from a worker thread."""
    async with running(settings) as svc:
        fleet = settings.model_copy(deep=True)
        assert svc.coap is not None
        assert svc.coap.port is not None
        fleet.coap.port = svc.coap.port
        return await asyncio.to_thread(
            run_scenario, scenario, fleet, metrics_port=svc.http_port, **kw
        )


def assert_nothing_lost(report: dict[str, Any]) -> None:
    assert report["lost"] == 0, report
    assert report["stored"] == report["expected_stored"] > 0
    assert report["rejected_unexpected"] == 0, report["rejected_reasons"]
    assert report["rejected_expected"] == report["malformed_sent"]
    for name, group in report["groups"].items():
        assert (group["lost"], group["stored"]) == (0, group["expected"]), name


async def test_mixed_city_with_faults_is_accounted_frame_by_frame(
    pg_url: str, broker: Any, topic_prefix: str
) -> None:
    scenario = city(topic_prefix)
    report = await simulate(city_settings(pg_url, broker, topic_prefix), scenario,
                            do_register=True)  # fmt: skip
    assert_nothing_lost(report)
    assert report["malformed_sent"] > 0
    assert report["duplicates_sent"] > 0
    assert report["late_sent"] > 0
    assert report["duplicates_stored"] == 0
    # QoS 1 and CON frames were acknowledged; QoS 0 and NON frames were not
    assert report["groups"]["air"]["acknowledged"] == report["groups"]["air"]["sent"]
    assert report["groups"]["senml"]["acknowledged"] == report["groups"]["senml"]["sent"]
    assert report["groups"]["env"]["confirmed"] is False
    assert report["groups"]["water"]["confirmed"] is False
    assert report["latency_s"] is None  # at speed max device time runs ahead of the clock
    # the report's "stored" is what the database holds, not what the fleet believes
    frames = query(pg_url, "SELECT count(*) FROM streetlight_status")[0][0]
    assert frames == report["groups"]["lights"]["stored"]
    dead = query(pg_url, "SELECT count(*) FROM dead_letters")[0][0]
    assert dead == report["malformed_sent"]
    # the same seed makes the same fleet: a run built now names the devices registered then
    again = FleetRun(scenario, Target("127.0.0.1", 1, None, None, True, "127.0.0.1", 1))
    registered = {r[0] for r in query(pg_url, "SELECT external_id FROM devices")}
    assert registered == {d for ids in again.ids for d in ids}
    assert len(registered) == report["devices"] == 459


async def test_frames_nobody_stored_are_reported_lost(
    pg_url: str, broker: Any, topic_prefix: str
) -> None:
    # The service subscribes to another prefix: the broker acknowledges the fleet's QoS 1
    # frames and, with no subscriber, discards them. The accounting must say so.
    scenario = city(
        f"{topic_prefix}-nobody",
        groups=[{"name": "lights", "model": "streetlight", "count": 40, "interval_s": 2}],
        faults={},
    )
    report = await simulate(city_settings(pg_url, broker, topic_prefix), scenario,
                            do_register=True)  # fmt: skip
    assert report["sent"] == report["acknowledged"] == 400
    assert report["stored"] == 0
    assert report["lost"] == report["expected_stored"] == 400


async def test_unregistered_fleet_is_rejected_as_unknown_devices(
    pg_url: str, broker: Any, topic_prefix: str
) -> None:
    scenario = city(
        topic_prefix,
        groups=[{"name": "env", "model": "nbiot-env", "count": 30, "interval_s": 5}],
        faults={},
    )
    report = await simulate(city_settings(pg_url, broker, topic_prefix), scenario)
    assert report["sent"] == 120
    assert report["stored"] == 0
    assert report["rejected_unexpected"] == 120
    assert report["rejected_reasons"] == {"unknown_device": 120}
    assert report["lost"] == 0  # refused with a reason is not lost


async def test_record_then_replay_stores_the_same_frames(
    pg_url: str, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    rec = tmp_path / "city.cfxrec"
    settings = city_settings(pg_url, broker, topic_prefix)
    first = await simulate(settings, city(topic_prefix), do_register=True, record_path=rec)
    assert_nothing_lost(first)
    assert first["recorded"] == first["sent"]
    assert sum(1 for _ in read_frames(rec)) == first["sent"]

    query(pg_url, "TRUNCATE env_readings, hj212_readings, streetlight_status, vehicle_tag_reads, "
                  "ev_status, vehicle_positions, dead_letters")  # fmt: skip
    async with running(settings) as svc:
        assert svc.coap is not None
        fleet = settings.model_copy(deep=True)
        fleet.coap.port = svc.coap.port
        fleet.http.port = svc.http_port
        again = await asyncio.to_thread(replay_file, rec, fleet, speed=None)
    assert again["lost"] == 0, again
    assert again["rejected_unexpected"] == 0
    # duplicates were recorded twice and are stored once again; the rest matches
    assert again["stored"] == first["stored"]
    assert again["duplicates_sent"] == first["duplicates_sent"] > 0
    assert again["rejected_expected"] == first["malformed_sent"]


async def test_hj212_corpus_hour_replays_without_loss(
    pg_url: str, broker: Any, topic_prefix: str
) -> None:
    hour = hj212_corpus_dir() / "2016-08-24_05.h212.gz"
    with gzip.open(hour) as fh:
        lines = sum(1 for line in fh if line.strip())
    settings = city_settings(pg_url, broker, topic_prefix)
    async with running(settings) as svc:
        fleet = settings.model_copy(deep=True)
        fleet.http.port = svc.http_port
        report = await asyncio.to_thread(replay_file, hour, fleet, speed=None,
                                         do_register=True)  # fmt: skip
    assert report["frames"] == report["sent"] == lines
    assert report["lost"] == 0, report
    assert report["rejected_unexpected"] == 0
    # frames the local decoder rejects (the corpus has some) come back as dead letters
    assert query(pg_url, "SELECT count(*) FROM dead_letters")[0][0] == report["rejected_expected"]
    assert report["stored"] == report["expected_stored"] > 0.8 * lines
    # field stations resend: the corpus holds the same (MN, CN, DataTime) more than once
    assert report["duplicates_sent"] > 0
    assert report["duplicates_stored"] == 0
    accounted = report["stored"] + report["duplicates_sent"] + report["rejected_expected"]
    assert accounted + report["no_rows"] + report["unverifiable"] == lines


def test_fleet_files_are_what_the_registry_imports(pg_url: str, tmp_path: Path) -> None:
    scenario = tmp_path / "city.yaml"
    scenario.write_text(yaml.safe_dump(city("t").model_dump(mode="json")))
    env = {**os.environ, "CITYFLUX_DATABASE__URL": pg_url}

    def cli(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "cityflux", *args], env=env, check=False,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    fleet = tmp_path / "fleet"
    said = cli("simulate", str(scenario), "--write-devices", str(fleet))
    # the gantries' traffic (hence the watch-listed tags seen) follows the clock's start
    lines = (fleet / "watchlist.txt").read_text().splitlines()
    tags = [t for t in lines if t and not t.startswith("#")]
    assert said.strip() == f"7 profiles, 459 devices, {len(tags)} watch-listed tags -> {fleet}/"
    with (fleet / "devices.csv").open() as fh:
        assert sum(1 for _ in fh) == 460  # a header and a line per device
    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    cli("profiles", "import", str(fleet / "profiles.yaml"))
    cli("devices", "import", str(fleet / "devices.csv"))
    assert query(pg_url, "SELECT count(*) FROM devices")[0][0] == 459
    kinds = dict(query(pg_url, "SELECT kind, count(*) FROM devices GROUP BY kind"))
    assert kinds["streetlight"] == 100
    assert kinds["gantry"] == 4
    cli("devices", "import", str(fleet / "devices.csv"))  # idempotent
    assert query(pg_url, "SELECT count(*) FROM devices")[0][0] == 459


async def test_ctrl_c_stops_the_fleet_and_still_prints_the_report(
    pg_url: str, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    scenario_file = tmp_path / "long.yaml"
    scenario_file.write_text(
        f"name: long\nduration_s: 3600\nspeed: 1\nprefix: {topic_prefix}\n"
        "groups:\n  - {name: env, model: nbiot-env, count: 100, interval_s: 1}\n"
    )
    settings = city_settings(pg_url, broker, topic_prefix)
    async with running(settings) as svc:
        env = service_env(settings)
        env["CITYFLUX_HTTP__PORT"] = str(svc.http_port)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cityflux", "simulate", str(scenario_file), "--register",
             "--json", "-q"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        # interrupt once frames flow (the simulator's start-up takes seconds on a busy machine)
        assert svc.pipeline is not None
        for _ in range(600):
            if svc.pipeline.stats.received > 0 or proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(proc.communicate, timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    report = json.loads(out)
    assert report["stopped_early"] is True
    assert 0 < report["sent"] < 360_000
    assert report["lost"] == 0
    assert report["stored"] == report["expected_stored"] == report["sent"]
    p = report["latency_s"]  # real time: device time → commit is meaningful
    assert 0 < p["p50"] <= p["p95"] <= p["p99"] < 5
