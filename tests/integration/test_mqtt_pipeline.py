"""MQTT → decoders → PostgreSQL through a real broker and a real database, in process."""

from __future__ import annotations

import asyncio
import json
import struct
import urllib.request
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from decoders.crc import crc16_ccitt_false_bytes
from decoders.gbt32960 import frame as gbt32960_frame
from decoders.gbt32960 import realtime_data as gbt32960_realtime
from decoders.hj212 import frame as hj212_frame
from decoders.jt808 import frame as jt808_frame
from decoders.jt808 import location_body
from decoders.llrp import encode_report
from decoders.streetlight import encode_frame as streetlight_frame
from decoders.tables import ALL_TABLES
from ingest.broker import EmbeddedBroker
from ingest.mqtt_v5 import Mqtt5Listener
from ingest.pipeline import Pausable
from ingest.topics import uplink
from storage.migrate import TimescaleMode, migrate
from tests.conftest import Broker
from tests.helpers import (
    env_frame,
    env_messages,
    ingest,
    publish,
    query,
    running,
    settings_for,
    wait_until,
)


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        lname, _, lset = key.partition("{")
        if lname == name and ",".join(sorted(lset.rstrip("}").split(","))) == want:
            return float(value)
    raise AssertionError(f"{name}{{{want}}} not exported")


async def test_valid_frames_are_stored_and_malformed_ones_dead_lettered(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    p = topic_prefix
    good = env_messages(p, devices=5, per_device=10)
    senml = [
        (
            uplink("env", f"s{d}", "senml-json", p),
            json.dumps([{"bt": 1_767_225_600 + s, "n": "no2", "v": s}]).encode(),
        )
        for d in range(4)
        for s in range(5)
    ]
    bad = [
        (uplink("env", "861000000000000", "nbiot-env", p), bytes(range(7))),
        (uplink("env", "861000000000001", "nbiot-env", p), env_frame(861000000000001, 99)[:31]),
        (uplink("env", "s9", "senml-json", p), b'[{"n":"no2","v":'),
        (uplink("env", "s9", "xml", p), b"<a/>"),
        (uplink("env", "869999999999999", "nbiot-env", p), env_frame(861000000000002, 98)),
    ]
    mixed = good[:25] + bad + good[25:] + senml
    settings = settings_for(pg_url, broker, p)
    async with running(settings) as svc:
        acked = await asyncio.to_thread(publish, broker, mixed)
        assert acked == len(mixed)
        assert svc.pipeline is not None
        await wait_until(lambda: svc.pipeline.stats.received == len(mixed), what="all frames")
        status, metrics = await asyncio.to_thread(_http, svc.http_port or 0, "/metrics")
        ready, body = await asyncio.to_thread(_http, svc.http_port or 0, "/readyz")
    assert status == 200
    assert (ready, json.loads(body)["status"]) == (200, "ready")
    assert query(pg_url, "SELECT count(*) FROM env_readings") == [(50 * 8 + 20,)]
    assert query(pg_url, "SELECT count(*) FROM devices") == [(9,)]
    assert query(
        pg_url,
        "SELECT value FROM env_readings r JOIN devices d ON d.id = r.device_id "
        "WHERE d.external_id = '861000000000003' AND metric = 'temperature' "
        "ORDER BY time",
    ) == [(20.0 + s,) for s in range(10)]
    dead = query(
        pg_url, "SELECT source, decoder, device, reason, payload FROM dead_letters ORDER BY reason"
    )
    assert [(d[1], d[3]) for d in dead] == [
        (
            "nbiot-env",
            "device_mismatch: topic names '869999999999999', frame carries IMEI 861000000000002",
        ),
        ("senml-json", "json_invalid: Expecting value: line 1 column 17 (char 16)"),
        ("nbiot-env", "truncated: need 32 bytes, got 31"),
        ("nbiot-env", "truncated: need 32 bytes, got 7"),
        ("xml", "unknown_format: no decoder named 'xml'"),
    ]
    assert dead[3][0] == f"{p}/up/env/861000000000000/nbiot-env"
    assert dead[3][2] == "861000000000000"
    assert dead[3][4] == bytes(range(7))
    assert (
        _metric(metrics, "cityflux_frames_received_total", transport="mqtt", format="nbiot-env")
        == 53
    )
    assert (
        _metric(metrics, "cityflux_frames_rejected_total", format="nbiot-env", reason="truncated")
        == 2
    )
    assert _metric(metrics, "cityflux_frames_decoded_total", format="senml-json") == 20
    assert _metric(metrics, "cityflux_rows_written_total", table="env_readings") == 420
    assert _metric(metrics, "cityflux_frames_acknowledged_total", transport="mqtt") == 75
    assert _metric(metrics, "cityflux_storage_info", backend="postgresql") == 1
    assert _metric(metrics, "cityflux_devices_provisioned_total") == 9
    assert _metric(metrics, "cityflux_batch_commit_seconds_count", format="nbiot-env") >= 1


async def test_unknown_devices_are_dead_lettered_when_the_policy_rejects_them(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(pg_url, broker, topic_prefix, pipeline={"unknown_devices": "reject"})
    msgs = env_messages(topic_prefix, devices=3, per_device=3)
    migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)
    query(pg_url, "INSERT INTO devices (external_id, kind) VALUES ('861000000000000', 'env')")
    query(
        pg_url,
        "INSERT INTO devices (external_id, kind, status) "
        "VALUES ('861000000000001', 'env', 'disabled')",
    )
    await ingest(broker, settings, msgs)
    assert query(
        pg_url,
        "SELECT d.external_id, count(DISTINCT time) FROM env_readings r "
        "JOIN devices d ON d.id = r.device_id GROUP BY 1",
    ) == [("861000000000000", 3)]
    assert query(pg_url, "SELECT reason, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1") == [
        ("disabled_device: 861000000000001", 3),
        ("unknown_device: 861000000000002", 3),
    ]
    assert query(pg_url, "SELECT count(*) FROM devices") == [(2,)]


async def test_shared_subscription_splits_the_stream_between_two_workers(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    if not broker.v5:
        pytest.skip("shared subscriptions need MQTT 5; this broker is the amqtt fallback")
    msgs = env_messages(topic_prefix, devices=10, per_device=40)
    a = settings_for(
        pg_url,
        broker,
        topic_prefix,
        mqtt={"shared_group": "ingest", "client_id": f"a-{topic_prefix}"},
    )
    b = settings_for(
        pg_url,
        broker,
        topic_prefix,
        mqtt={"shared_group": "ingest", "client_id": f"b-{topic_prefix}"},
    )
    async with running(a) as wa, running(b) as wb:
        assert wa.pipeline is not None
        assert wb.pipeline is not None
        await asyncio.to_thread(publish, broker, msgs)
        await wait_until(
            lambda: wa.pipeline.stats.received + wb.pipeline.stats.received == 400,
            what="400 frames across both workers",
        )
        got = (wa.pipeline.stats.received, wb.pipeline.stats.received)
    assert min(got) > 0, f"one worker got everything: {got}"
    assert query(
        pg_url, "SELECT count(DISTINCT (device_id, time)), count(*) FROM env_readings"
    ) == [(400, 3200)]


class _Spy(Pausable):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


async def test_backpressure_pauses_the_source_and_loses_nothing(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(
        pg_url, broker, topic_prefix, pipeline={"max_inflight_frames": 50, "batch_max_frames": 20}
    )
    msgs = env_messages(topic_prefix, devices=20, per_device=30)
    async with running(settings) as svc:
        assert svc.pipeline is not None
        pipe = svc.pipeline
        spy = _Spy()
        pipe.add_source(spy)
        # commits wait behind this lock, so frames pile up past max_inflight_frames
        with psycopg.connect(pg_url) as blocker:
            blocker.execute("LOCK TABLE env_readings IN ACCESS EXCLUSIVE MODE")
            sender = asyncio.create_task(asyncio.to_thread(publish, broker, msgs))
            await wait_until(lambda: "pause" in spy.calls, what="the source to be paused")
            assert pipe.inflight >= 50
            blocker.rollback()
        assert await sender == 600
        await wait_until(lambda: pipe.stats.received == 600, what="600 frames")
        await wait_until(lambda: pipe.inflight == 0, what="every frame committed")
        batches = pipe.stats.batches
    assert query(pg_url, "SELECT count(DISTINCT (device_id, time)) FROM env_readings") == [(600,)]
    assert batches >= 30  # never more than 20 frames per batch
    assert spy.calls[-1] == "resume"


async def test_qos0_frames_are_stored(pg_url: str, broker, topic_prefix: str) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(pg_url, broker, topic_prefix, mqtt={"qos": 0})
    async with running(settings) as svc:
        assert svc.pipeline is not None
        await asyncio.to_thread(publish, broker, env_messages(topic_prefix, 5, 20), 0, 2000.0)
        await wait_until(lambda: svc.pipeline.stats.received == 100, what="100 QoS 0 frames")
        assert svc.pipeline.stats.acked == 0  # nothing to acknowledge at QoS 0
    assert query(pg_url, "SELECT count(*) FROM env_readings") == [(800,)]


async def test_embedded_amqtt_broker_carries_the_pipeline_over_mqtt_311(
    pg_url: str, topic_prefix: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The fallback for machines without mosquitto: pure-Python amqtt, MQTT 3.1.1, QoS 1."""
    emb = EmbeddedBroker(tmp_path / "amqtt", kind="amqtt").start()
    try:
        b = Broker("127.0.0.1", emb.port, v5=False)
        settings = settings_for(pg_url, b, topic_prefix)
        assert settings.mqtt.protocol.value == "3.1.1"
        async with running(settings) as svc:
            assert svc.pipeline is not None
            assert await asyncio.to_thread(publish, b, env_messages(topic_prefix, 4, 10)) == 40
            await wait_until(lambda: svc.pipeline.stats.received == 40, what="40 frames")
            assert svc.pipeline.stats.acked == 40
    finally:
        emb.stop()
    assert query(pg_url, "SELECT count(DISTINCT (device_id, time)) FROM env_readings") == [(40,)]


async def test_hj212_frames_are_stored_and_acknowledged_with_9014_on_the_downlink(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    got: list[bytes] = []
    sub = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"dl-{topic_prefix}",
        protocol=MQTTProtocolVersion.MQTTv5 if broker.v5 else MQTTProtocolVersion.MQTTv311,
    )
    sub.on_message = lambda _c, _u, msg: got.append(msg.payload)
    sub.connect(broker.host, broker.port)
    sub.subscribe(f"{topic_prefix}/down/water/#", 1)
    sub.loop_start()
    wants_ack = hj212_frame(
        "QN=20240101120000123;ST=32;CN=2011;PW=123456;MN=ST01;Flag=5;"
        "CP=&&DataTime=20240101120000;w01018-Rtd=31.5,w01018-Flag=N;"
        "w21003-Rtd=1.25,w21003-Flag=D&&"
    )
    no_ack = hj212_frame(
        "QN=20240101120100000;ST=32;CN=2011;PW=123456;MN=ST01;Flag=4;"
        "CP=&&DataTime=20240101120100;w01018-Rtd=30.0,w01018-Flag=N&&"
    )
    msgs = [
        (uplink("water", "ST01", "hj212", topic_prefix), wants_ack),
        (uplink("water", "ST01", "hj212", topic_prefix), no_ack),
    ]
    try:
        async with running(settings_for(pg_url, broker, topic_prefix)) as svc:
            assert svc.pipeline is not None
            await asyncio.to_thread(publish, broker, msgs)
            await wait_until(lambda: svc.pipeline.stats.received == 2, what="2 frames")
            await wait_until(lambda: len(got) == 1, 10, "the 9014 response")
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert got[0][6:-6] == (b"QN=20240101120000123;ST=91;CN=9014;PW=123456;MN=ST01;Flag=4;CP=&&&&")
    assert query(
        pg_url, "SELECT factor, value, flag, time FROM hj212_readings ORDER BY time, factor"
    ) == [
        ("w01018", 31.5, "N", datetime(2024, 1, 1, 4, 0, tzinfo=UTC)),
        ("w21003", 1.25, "D", datetime(2024, 1, 1, 4, 0, tzinfo=UTC)),
        ("w01018", 30.0, "N", datetime(2024, 1, 1, 4, 1, tzinfo=UTC)),
    ]


async def test_streetlight_frames_with_nulls_and_booleans_reach_postgresql(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    imei = 861234567890125
    on = streetlight_frame(
        imei,
        1_767_225_600,
        1,
        voltage=230.5,
        current=0.4,
        power=88.0,
        energy_kwh=12.5,
        dimming=80,
        lamp_on=True,
        temperature=-5,
    )
    raw = bytearray(
        streetlight_frame(
            imei,
            1_767_225_660,
            2,
            voltage=0,
            current=0,
            power=0,
            energy_kwh=12.5,
            dimming=0,
            lamp_on=False,
        )
    )
    raw[16:18] = b"\xff\xff"  # voltage not measured
    raw[32:34] = crc16_ccitt_false_bytes(bytes(raw[:32])).to_bytes(2, "big")
    topic = uplink("streetlight", str(imei), "streetlight", topic_prefix)
    async with running(settings_for(pg_url, broker, topic_prefix)) as svc:
        assert svc.pipeline is not None
        await asyncio.to_thread(publish, broker, [(topic, on), (topic, bytes(raw))])
        await wait_until(lambda: svc.pipeline.stats.received == 2, what="2 frames")
    assert query(
        pg_url,
        "SELECT voltage_v, current_a, power_w, energy_kwh, dimming_pct, "
        "lamp_on, faults, temperature_c FROM streetlight_status ORDER BY time",
    ) == [
        (230.5, 0.4, 88.0, 12.5, 80, True, 0, -5),
        (None, 0.0, 0.0, 12.5, 0, False, 0, 25),
    ]
    assert query(pg_url, "SELECT kind FROM devices") == [("streetlight",)]


async def test_jt808_location_reports_reach_vehicle_positions(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    body = location_body(
        -33.8688,
        151.2093,
        time="260101083000",
        speed_kmh=42.5,
        heading=180,
        alarm=1,
        extras=b"\x30\x01\x1f",
    )
    topic = uplink("vehicle", "13800138000", "jt808", topic_prefix)
    msgs = [
        (topic, jt808_frame(0x0200, "13800138000", 1, body)),
        (topic, jt808_frame(0x0002, "13800138000", 2, b"")),
    ]
    await ingest(broker, settings_for(pg_url, broker, topic_prefix), msgs)
    assert query(
        pg_url,
        "SELECT lat, lon, speed_kmh, heading_deg, alarm, signal, mileage_km, "
        "time FROM vehicle_positions",
    ) == [(-33.8688, 151.2093, 42.5, 180, 1, 31, None, datetime(2026, 1, 1, 0, 30, tzinfo=UTC))]


async def test_lwm2m_tlv_takes_its_object_from_the_topic(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    # IPSO 3303 temperature instance: 5700 sensor value 21.5 (float32), 5518 timestamp
    tlv = (
        b"\xe4\x16\x44"
        + struct.pack(">f", 21.5)
        + b"\xe4\x15\x8e"
        + struct.pack(">I", 1_767_225_600)
    )
    msgs = [
        (uplink("env", "ep-17", "lwm2m-tlv", topic_prefix, "/3303/0"), tlv),
        (uplink("env", "ep-18", "lwm2m-tlv", topic_prefix), tlv),  # no object: a dead letter
    ]
    await ingest(broker, settings_for(pg_url, broker, topic_prefix), msgs)
    assert query(
        pg_url,
        "SELECT d.external_id, r.metric, r.value, r.time FROM env_readings r "
        "JOIN devices d ON d.id = r.device_id",
    ) == [("ep-17", "temperature", 21.5, datetime(2026, 1, 1, tzinfo=UTC))]
    [(topic, reason)] = query(pg_url, "SELECT source, reason FROM dead_letters")
    assert topic.endswith("/ep-18/lwm2m-tlv")
    assert reason.startswith("lwm2m_invalid: source")
    assert "names no object" in reason


async def test_tag_reads_from_llrp_and_json_share_one_table(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    report = encode_report(
        [
            {
                "epc": "300833B2DDD9014000000001",
                "antenna": 2,
                "rssi": -58,
                "first_us": 1_767_225_600_250_000,
                "last_us": 1_767_225_600_400_000,
                "count": 3,
            }
        ]
    )
    event = json.dumps(
        {
            "epc": "E2003412",
            "plate": "粤B12345",
            "rssi": -61,
            "first_seen": "2026-01-01T08:00:01+08:00",
        }
    ).encode()
    msgs = [
        (uplink("gantry", "G-0101", "llrp", topic_prefix), report),
        (uplink("gantry", "G-0102", "tagread-json", topic_prefix), event),
    ]
    await ingest(broker, settings_for(pg_url, broker, topic_prefix), msgs)
    assert query(
        pg_url,
        "SELECT d.external_id, r.epc, r.plate, r.antenna, r.rssi_dbm, "
        "r.last_seen - r.time FROM vehicle_tag_reads r "
        "JOIN devices d ON d.id = r.device_id ORDER BY r.time",
    ) == [
        ("G-0101", "300833B2DDD9014000000001", None, 2, -58, timedelta(milliseconds=150)),
        ("G-0102", "E2003412", "粤B12345", None, -61, None),
    ]


async def test_gbt32960_realtime_data_reaches_ev_status_and_positions(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    vin = "LSVAU2180N2183294"
    topic = uplink("ev", vin, "gbt32960", topic_prefix)
    msgs = [
        (topic, gbt32960_frame(0x02, vin, gbt32960_realtime())),
        (topic, gbt32960_frame(0x07, vin, b"")),
    ]
    await ingest(broker, settings_for(pg_url, broker, topic_prefix), msgs)
    assert query(
        pg_url,
        "SELECT soc_pct, speed_kmh, voltage_v, current_a, max_alarm_level, "
        "max_temp_c, reissued FROM ev_status",
    ) == [(76, 62.5, 365.0, 25.0, 2, 30, False)]
    assert query(pg_url, "SELECT lat, lon FROM vehicle_positions") == [(22.543096, 114.057865)]


async def test_mqtt5_listener_paused_for_backpressure_keeps_its_connection(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    if not broker.v5:
        pytest.skip("the MQTT 5 listener needs an MQTT 5 broker (the amqtt fallback is 3.1.1)")
    settings = settings_for(pg_url, broker, topic_prefix, mqtt={"keepalive_s": 5})
    async with running(settings) as svc:
        listener = svc.mqtt
        assert isinstance(listener, Mqtt5Listener)
        listener.pause()
        await asyncio.sleep(10)  # the broker drops a client silent for 1.5 x keep-alive
        listener.resume()
        assert listener.connected
        assert listener._acks.generation == 1  # never reconnected
        assert svc.pipeline is not None
        pipe = svc.pipeline
        msgs = env_messages(topic_prefix, devices=2, per_device=5)
        assert await asyncio.to_thread(publish, broker, msgs) == 10
        await wait_until(lambda: pipe.stats.stored_frames == 10, what="10 frames after resuming")
