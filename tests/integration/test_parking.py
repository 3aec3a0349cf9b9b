"""Smart parking end to end: lots and space sensors in the registry, reports over MQTT
(parking-sensor frames) and CoAP (IPSO presence 3302 as LwM2M TLV and SenML), the debounced
state of each space, per-lot occupancy over time, GET /api/v1/parking/lots and the
connected-lots gauge — against the real broker, CoAP over UDP and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cityflux.cli import app
from cityflux.demo import SCENARIOS
from decoders.parking import encode_frame
from ingest.topics import uplink
from simulators.scenario import Scenario, load_scenario
from simulators.session import run_scenario
from tests.helpers import api_call, issue_token, publish, query, running, settings_for, wait_until
from tests.integration.test_coap import client, coap_port, post

EXAMPLE_RULES = Path(__file__).parents[2] / "alerts" / "examples" / "parking.yaml"
LOTS = "lot,name,capacity,district\nP1,Station square,4,Centre\n"
DEVICES = (
    "external_id,lot,space\n"
    "861000000000101,P1,A1\n"
    "861000000000102,P1,A2\n"
    "861000000000103,P1,A3\n"
    "861000000000104,P1,A4\n"
    "ep-park-1,P2,B1\n"
    "ep-park-2,P2,B2\n"
)


def _cli(pg_url: str, *args: str) -> Any:
    return CliRunner().invoke(
        app, list(args), env={"CITYFLUX_DATABASE__URL": pg_url, "CITYFLUX_LOG_LEVEL": "WARNING"}
    )


def _frame(prefix: str, imei: int, t: int, seq: int, occupied: bool) -> tuple[str, bytes]:
    topic = uplink("parking", str(imei), "parking-sensor", prefix)
    return topic, encode_frame(imei, t, seq, occupied=occupied)


def test_lots_file_errors_name_the_line_and_field_and_the_rest_is_imported(
    pg_url: str, tmp_path: Path
) -> None:
    lots = tmp_path / "lots.csv"
    lots.write_text(
        "lot,capacity,name,lat,lon\n"
        "P1,120,Station square,22.54,114.05\n"
        "P 2,10,,,\n"  # line 3: a space in the id
        "P3,0,,,\n"  # line 4: no spaces
        "P4,12,,22.5,\n"  # line 5: lat without lon
    )
    result = _cli(pg_url, "parking", "import-lots", str(lots))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{lots}:3: lot: 'P 2': 1-64 bytes, no spaces or control characters",
        f"{lots}:4: capacity: '0' is not a whole number of spaces 1..1000000",
        f"{lots}:5: lon: lat and lon go together",
    ]
    assert "1 lots read, 1 inserted or changed, 3 bad lines" in result.stdout
    again = _cli(pg_url, "parking", "import-lots", str(lots))
    assert "1 lots read, 0 inserted or changed, 3 bad lines" in again.stdout
    assert query(pg_url, "SELECT lot, name, capacity, lat, lon FROM parking_lots") == [
        ("P1", "Station square", 120, 22.54, 114.05)
    ]
    lots.write_text("lot,spaces\nP1,3\n")
    bad = _cli(pg_url, "parking", "import-lots", str(lots))
    assert bad.exit_code == 2
    assert "header must name lot and capacity" in bad.stderr
    assert "unknown: spaces" in bad.stderr


def test_lot_and_space_are_device_attributes_imported_and_exported(
    pg_url: str, tmp_path: Path
) -> None:
    devices = tmp_path / "devices.csv"
    devices.write_text(DEVICES)
    assert _cli(pg_url, "devices", "import", str(devices)).exit_code == 0
    assert query(pg_url, "SELECT external_id, lot, space FROM devices ORDER BY 1")[:2] == [
        ("861000000000101", "P1", "A1"),
        ("861000000000102", "P1", "A2"),
    ]
    devices.write_text('external_id,lot,space\n861000000000101,P9,"A 1"\n')
    assert _cli(pg_url, "devices", "import", str(devices)).exit_code == 0
    assert query(
        pg_url, "SELECT lot, space FROM devices WHERE external_id = '861000000000101'"
    ) == [("P9", "A 1")]
    exported = tmp_path / "export.csv"
    assert _cli(pg_url, "devices", "export", str(exported)).exit_code == 0
    header, first = exported.read_text().splitlines()[:2]
    assert header.endswith(",lot,space")
    assert first.startswith("861000000000101,")
    assert first.endswith(",P9,A 1")


async def test_space_reports_over_mqtt_and_coap_give_each_lot_its_free_spaces_now(
    pg_url: str, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "lots.csv").write_text(LOTS)
    (tmp_path / "devices.csv").write_text(DEVICES)
    assert _cli(pg_url, "parking", "import-lots", str(tmp_path / "lots.csv")).exit_code == 0
    assert _cli(pg_url, "devices", "import", str(tmp_path / "devices.csv")).exit_code == 0
    token = issue_token(pg_url, "parking-read", "read")
    settings = settings_for(
        pg_url,
        broker,
        topic_prefix,
        coap={"mode": "open", "port": 0},
        registry={"last_seen_flush_s": 0.2, "status_interval_s": 0.2},
    )
    t0 = int(time.time()) - 3600  # an hour ago: A4's lone report has held for the interval
    p = topic_prefix
    a1, a2, a3, a4 = 861000000000101, 861000000000102, 861000000000103, 861000000000104
    rounds = [
        [_frame(p, a1, t0, 1, False), _frame(p, a2, t0, 1, False), _frame(p, a3, t0, 1, True),
         _frame(p, a4, t0, 1, False)],
        [_frame(p, a1, t0 + 10, 2, True), _frame(p, a2, t0 + 10, 2, True),
         _frame(p, a4, t0 + 30, 2, True)],
        [_frame(p, a1, t0 + 20, 3, True), _frame(p, a2, t0 + 20, 3, False)],
        # a redelivery of A1's reports changes nothing
        [_frame(p, a1, t0 + 10, 2, True), _frame(p, a1, t0 + 20, 3, True)],
    ]  # fmt: skip
    async with running(settings) as svc, client() as ctx:
        assert svc.pipeline is not None
        pipe = svc.pipeline
        sent = 0
        for msgs in rounds:  # each round committed before the next: reports in order
            assert await asyncio.to_thread(publish, broker, msgs) == len(msgs)
            sent += len(msgs)
            await wait_until(lambda n=sent: pipe.stats.received == n, what=f"{sent} frames")
            await pipe.wait_idle()
        port = coap_port(svc)
        tlv = await post(
            ctx, port, "/up/parking/ep-park-1/3302/0", bytes.fromhex("e1157c01"), 11542
        )
        senml = json.dumps([{"n": "3302/0/5500", "vb": False}]).encode()
        pack = await post(ctx, port, "/up/parking/ep-park-2", senml, 110)
        assert (str(tlv.code), str(pack.code)) == ("2.04 Changed", "2.04 Changed")
        await wait_until(
            lambda: query(pg_url, "SELECT count(*) FROM devices WHERE last_seen IS NULL") == [(0,)],
            what="every sensor's last seen written",
        )
        ratio = svc.metrics.parking_lots_connected_ratio
        await wait_until(lambda: ratio._value.get() == 1.0, what="the connected-lots gauge")
        status, lots = await asyncio.to_thread(
            api_call, svc.http_port or 0, "/api/v1/parking/lots", token=token
        )
        _, spec = await asyncio.to_thread(api_call, svc.http_port or 0, "/openapi.json")
    assert pipe.stats.received == sent + 2  # and the two CoAP uplinks
    assert query(pg_url, "SELECT count(*) FROM dead_letters") == [(0,)]
    assert status == 200
    for lot in lots:
        assert lot.pop("updated_at") is not None
    assert lots == [
        # A1 occupied (two reports), A2 free (one report of a car: a flap), A3 occupied (its
        # first report), A4 a lone report of a car an hour ago: held for the interval
        {"lot": "P1", "name": "Station square", "registered": True, "capacity": 4,
         "sensors": 4, "reporting": 4, "heard_24h": 4, "occupied": 3, "free": 1,
         "occupied_pct": 75.0},
        # not in parking_lots: its sensors are its capacity
        {"lot": "P2", "name": "", "registered": False, "capacity": 2, "sensors": 2,
         "reporting": 2, "heard_24h": 2, "occupied": 1, "free": 1, "occupied_pct": 50.0},
    ]  # fmt: skip
    assert "/api/v1/parking/lots" in spec["paths"]

    def at(s: int) -> datetime:
        return datetime.fromtimestamp(s, UTC)

    assert query(
        pg_url,
        "SELECT d.space, s.occupied, s.changed_at, s.pending, s.pending_since, s.changes, s.flaps "
        "FROM parking_spaces s JOIN devices d ON d.id = s.device_id WHERE d.lot = 'P1' ORDER BY 1",
    ) == [
        ("A1", True, at(t0 + 10), None, None, 1, 0),
        ("A2", False, at(t0), None, None, 0, 1),
        ("A3", True, at(t0), None, None, 0, 0),
        ("A4", False, at(t0), True, at(t0 + 30), 0, 0),
    ]
    # the confirmed count after each batch that reported on the lot
    assert query(
        pg_url,
        "SELECT time, occupied, capacity FROM parking_lot_occupancy WHERE lot = 'P1' ORDER BY 1",
    ) == [(at(t0), 1, 4), (at(t0 + 20), 2, 4), (at(t0 + 30), 1, 4)]
    hour = at(t0 - t0 % 3600)
    rows = query(
        pg_url,
        "SELECT bucket, lot, occupied_min, occupied_max, samples "
        "FROM parking_lot_occupancy_hourly WHERE lot = 'P1' ORDER BY 1",
    )
    assert rows[0][:2] == (hour, "P1")
    assert sum(r[4] for r in rows) == 3


async def test_the_parking_scenario_leaves_each_lot_as_the_simulator_holds_it(
    pg_url: str, broker: Any, topic_prefix: str
) -> None:
    scenario = load_scenario(SCENARIOS / "parking.yaml")
    # 300 spaces, ten minutes of device time at 60× (10 s), slots of 5 minutes, the match
    # two minutes in
    data = scenario.model_dump()
    data.update(duration_s=600, speed=60, prefix=topic_prefix)
    data["groups"][0]["count"] = 300
    data["groups"][0]["options"].update(match_at_s=120, slot_s=300, flap_rate=0.1)
    scenario = Scenario.model_validate(data)
    settings = settings_for(
        pg_url,
        broker,
        topic_prefix,
        pipeline={"flush_interval_ms": 50, "unknown_devices": "reject"},
    )
    async with running(settings) as svc:
        report = await asyncio.to_thread(
            run_scenario, scenario, settings, do_register=True, metrics_port=svc.http_port
        )
        token = issue_token(pg_url, "parking-read", "read")
        _, lots = await asyncio.to_thread(
            api_call, svc.http_port or 0, "/api/v1/parking/lots", token=token
        )
    assert report["lost"] == 0, report
    assert report["stored"] == report["expected_stored"] > 0
    assert report["rejected_unexpected"] == 0, report["rejected_reasons"]
    simulated = report["parking_lots"]
    assert [x["lot"] for x in simulated] == [f"parking-lot{k}" for k in range(1, 7)]
    assert sum(x["capacity"] for x in simulated) == 300
    # exactly what the simulator's lots hold, every change debounced, every flap ignored
    assert [(x["lot"], x["capacity"], x["occupied"]) for x in lots] == [
        (x["lot"], x["capacity"], x["occupied"]) for x in simulated
    ]
    stadium = [x for x in lots if x["lot"] in ("parking-lot5", "parking-lot6")]
    assert all(x["occupied_pct"] >= 90 for x in stadium), stadium
    flaps = query(pg_url, "SELECT sum(flaps) FROM parking_spaces")[0][0]
    assert flaps > 0  # spurious flips were sent, and suppressed


async def test_a_full_lot_and_a_flapping_sensor_raise_their_alerts_through_the_service(
    pg_url: str, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "lots.csv").write_text("lot,capacity\nP9,2\n")
    (tmp_path / "devices.csv").write_text(
        "external_id,lot,space\n861000000000901,P9,1\n861000000000902,P9,2\n861000000000903,P8,1\n"
    )
    assert _cli(pg_url, "parking", "import-lots", str(tmp_path / "lots.csv")).exit_code == 0
    assert _cli(pg_url, "devices", "import", str(tmp_path / "devices.csv")).exit_code == 0
    settings = settings_for(
        pg_url,
        broker,
        topic_prefix,
        alerts={"rules_file": str(EXAMPLE_RULES), "mqtt_topic_prefix": ""},
    )
    t0 = int(time.time()) - 3600
    p, a, b, c = topic_prefix, 861000000000901, 861000000000902, 861000000000903
    rounds = [
        [_frame(p, a, t0, 1, False), _frame(p, b, t0, 1, False), _frame(p, c, t0, 1, False)],
        # both spaces of P9 taken (two reports each): full from t0 + 75
        [_frame(p, a, t0 + 60, 2, True), _frame(p, a, t0 + 65, 3, True),
         _frame(p, b, t0 + 70, 2, True), _frame(p, b, t0 + 75, 3, True)],
        # C flips back and forth: six single reports of a car, each taken back (one round
        # each: two batches of one space's reports may commit in either order)
        *([_frame(p, c, t0 + 100 + 10 * i, 2 + i, i % 2 == 0)] for i in range(12)),
        # heartbeats five minutes on: P9 is still full
        [_frame(p, a, t0 + 400, 4, True), _frame(p, c, t0 + 400, 14, False)],
    ]  # fmt: skip
    async with running(settings) as svc:
        assert svc.pipeline is not None
        pipe = svc.pipeline
        sent = 0
        for msgs in rounds:
            assert await asyncio.to_thread(publish, broker, msgs) == len(msgs)
            sent += len(msgs)
            await wait_until(lambda n=sent: pipe.stats.received == n, what=f"{sent} frames")
            await pipe.wait_idle()
    got = query(
        pg_url,
        "SELECT rule, subject, state, extract(epoch FROM raised_at)::bigint - %s, raised_value "
        "FROM alerts ORDER BY rule, subject",
        t0,
    )
    assert got == [
        ("parking-lot-full", "P9", "raised", 400, 100.0),
        ("parking-sensor-flapping", "861000000000903", "raised", 210, 6.0),
    ]
    assert query(
        pg_url,
        "SELECT s.flaps FROM parking_spaces s JOIN devices d ON d.id = s.device_id "
        "WHERE d.external_id = '861000000000903'",
    ) == [(6,)]
