"""``cityflux bench --quick --json``: runs against a private mosquitto and the database server,
prints the figures the issue names, and loses nothing. (No timing is asserted here.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("mosquitto") is None, reason="the bench runs its own mosquitto"
    ),
]

KEYS = (
    "e2e_msgs_per_s",
    "c_client_msgs_per_s",
    "e2e_readings_per_s",
    "raw_copy_rows_per_s",
    "live_events_per_s",
    "fleet_alone_events_per_s",
    "coap_req_per_s",
    "naive_msgs_per_s",
    "lost",
)


def test_quick_bench_prints_every_figure_and_loses_nothing(pg_server: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CITYFLUX_BENCH_PG_URL": pg_server},
        check=True,
    )
    res = json.loads(out.stdout)
    assert set(KEYS) <= set(res)
    assert res["lost"] == 0
    d = res["detail"]
    # every drain stored exactly what it was sent: 20,000 one-reading and 10,000 × 8 readings
    (run,) = d["runs"]
    for q in (0, 1):
        assert run[f"single_qos{q}"]["stored_readings"] == 20_000
        assert run[f"multi_qos{q}"]["stored_readings"] == 80_000
    # acknowledged is what the service wrote as PUBACKs, not what was preloaded
    assert res["acknowledged"] == res["sent_qos1"] == 30_000
    assert run["raw_copy"] > 0
    assert res["raw_copy_connections"] == 2  # as many as the pipeline's writers
    live = d["live"]["runs"]
    assert [r["stored"] for r in live["cityflux"]] == [10_000]
    assert [r["acknowledged"] for r in live["cityflux"]] == [10_000]
    assert d["naive_stored_per_run"] == [3_000]
    for key in KEYS[:-1]:
        assert res[key] > 0, key
    # the limits and the peers come from Debian and PyPI: say why one is missing
    for name, key, err in (
        ("mq-bridge", "mq_bridge_events_per_s", live["mq_bridge"][0].get("error")),
        ("libcoap", "libcoap_req_per_s", d["coap"]["runs"]["libcoap"][0].get("error")),
        ("esphome peer", "esphome_msgs_per_s", d["esphome"].get("error")),
    ):
        if res[key] is None:
            pytest.fail(f"{name} not measured: {err}")
    assert live["mq_bridge"][0]["stored"] == 10_000
    assert d["esphome"]["backlog_left"] > 0, "the peer ran out of work: its rate is understated"
    assert json.loads((tmp_path / "quick.json").read_text())["lost"] == 0
    # the run is in the history, and the history draws
    (entry,) = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert entry["figures"]["lost"] == 0
    assert entry["commit"]
    png = tmp_path / "history.png"
    subprocess.run(  # through the command line, as a user runs it
        [
            *(sys.executable, "-m", "cityflux", "bench", "--results", str(tmp_path)),
            *("--plot", "--plot-to", str(png)),
        ],
        check=True,
        timeout=120,
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaleout_bench_drains_every_frame(pg_server: str, tmp_path: Path) -> None:
    """``python -m bench.scaleout`` (the lead runs it at full size, N = 1, 2, 4): a tiny
    backlog, two workers, one run; every frame acknowledged and stored, none dead-lettered."""
    subprocess.run(
        [
            *(sys.executable, "-m", "bench.scaleout", "--frames", "500", "--workers", "2"),
            *("--runs", "1", "--results", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CITYFLUX_BENCH_PG_URL": pg_server},
        check=True,
    )
    res = json.loads((tmp_path / "scaleout.json").read_text())
    [one] = res["workers"]["2"]["runs"]
    assert (one["acknowledged"], one["stored_readings"], one["dead_letters"]) == (500, 4000, 0)
    assert (one["lost_frames"], one["exit_code"]) == (0, 0)
    assert res["workers"]["2"]["efficiency"] is None  # no N = 1 run to compare with


def test_mq_bridge_clock_is_the_tables_last_insert(pg_url: str) -> None:
    """The live peer's run ends at the database's time of its last row (no poller sampling
    it): rows inserted as mq-bridge inserts them carry their insert time."""
    import time

    import psycopg

    from bench.mqbridge_peer import create_table, last_insert_us

    create_table(pg_url, "mqb_clock")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert last_insert_us(conn, "mqb_clock") == 0
        before = time.time_ns() // 1000
        conn.execute(
            "INSERT INTO mqb_clock (time, reader, antenna, epc, rssi, count) "
            "VALUES (now(), 'r', 1, 'e', -50, 1)"
        )
        time.sleep(0.3)
        got = last_insert_us(conn, "mqb_clock")
    assert before - 50_000 <= got <= before + 250_000  # at the insert, not 0.3 s later


def test_a_measurement_leaves_no_session_subscribed_behind(broker) -> None:  # type: ignore[no-untyped-def]
    """Each drain's session is deleted after it: one left subscribed to bench/up/# would take
    a queued copy of every later preload and live publish."""
    import time

    from bench.common import create_session, end_session
    from core.mqtt import MqttConfig
    from ingest.workers import session_exists

    if not broker.v5:
        pytest.skip("sessions are probed over MQTT 5")
    cid = f"bench-left-{time.time_ns()}"
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, client_id="probe")
    create_session(broker.port, cid, "bench/up/#", 1)
    assert session_exists(cfg, cid)
    end_session(broker.port, cid)
    assert not session_exists(cfg, cid)


def test_the_c_client_and_the_drain_delete_their_sessions(  # type: ignore[no-untyped-def]
    broker, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small drain by each (no timing): every session they made is gone afterwards."""
    if not broker.v5 or shutil.which("mosquitto_sub") is None:
        pytest.skip("needs Mosquitto and its C client")
    from bench import common, limits, mqtt_rates, workloads
    from core.mqtt import MqttConfig
    from ingest.workers import session_exists
    from storage.migrate import TimescaleMode, migrate

    made: list[str] = []

    def create(port: int, cid: str, topic: str, qos: int) -> None:
        made.append(cid)
        common.create_session(port, cid, topic, qos)

    monkeypatch.setattr(limits, "create_session", create)
    monkeypatch.setattr(mqtt_rates, "create_session", create)
    from decoders.registry import load_registry

    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    msgs = workloads.single_reading(200)
    assert limits.c_client_rate(broker.port, msgs, 1, "t") > 0
    assert mqtt_rates.e2e_rate(broker.port, pg_url, msgs, 1, "t").rows_in_db == 200
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, client_id="probe")
    assert len(made) == 2
    assert [session_exists(cfg, cid) for cid in made] == [False, False]


def test_live_runs_store_the_fleet_and_delete_their_sessions(  # type: ignore[no-untyped-def]
    broker, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny live fleet (no timing) against cityflux and mq-bridge: every event stored, the
    clocks positive, and neither consumer's session left on the broker."""
    if not broker.v5 or shutil.which("mosquitto_pub") is None:
        pytest.skip("needs Mosquitto and its C publisher")
    pytest.importorskip("mq_bridge")
    from bench import common, live
    from core.mqtt import MqttConfig
    from decoders.registry import load_registry
    from ingest.workers import session_exists
    from storage.migrate import TimescaleMode, migrate

    ended: list[str] = []

    def end(port: int, cid: str) -> None:
        ended.append(cid)
        common.end_session(port, cid)

    monkeypatch.setattr(live, "end_session", end)
    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    ours = live.cityflux_live(broker.port, pg_url, live.fleet_files(tmp_path, 1, 200, 0))
    assert (ours["stored"], ours["lost"]) == (200, 0)
    assert ours["elapsed_s"] > 0
    (tmp_path / "peer").mkdir()
    theirs = live.mqbridge_live(broker.port, pg_url, live.fleet_files(tmp_path / "peer", 1, 200, 1))
    assert (theirs["stored"], theirs["lost"]) == (200, 0)
    assert theirs["elapsed_s"] > 0
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, client_id="probe")
    assert len(ended) == 2
    assert [session_exists(cfg, cid) for cid in ended] == [False, False]
