"""MQTT over TLS for the clients besides the service's listeners, against a real Mosquitto
TLS listener with certificates made here (tests/pki.py): the alert sink publishes its events,
the simulator runs a fleet, ``record`` captures a replay and ``replay`` sends it — each with
its own client certificate, the broker's certificate checked against the CA; a wrong CA is
refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import queue
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from alerts.sinks import MqttSink, event_json
from core.mqtt import MqttConfig
from device_registry.credentials import acl_text
from ingest.settings import Settings
from simulators.recorder import record_mqtt
from simulators.recording import read_frames
from simulators.scenario import Scenario
from simulators.session import replay_file, run_scenario
from tests.helpers import query, running, settings_for
from tests.pki import MOSQUITTO, Pki, TlsBroker, make_pki, tls_mosquitto

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto binary")
SERVICE = "cityflux-ingest"  # reads uplinks, writes alerts
SIMULATOR = "cityflux-simulator"  # writes any device's uplinks, reads the broker's $SYS
WATCHER = "alert-watcher"  # reads alerts


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), (SERVICE, SIMULATOR, WATCHER))


@pytest.fixture
def tls_broker(pki: Pki, tmp_path: Path, topic_prefix: str) -> Iterator[TlsBroker]:
    acl = (
        acl_text(topic_prefix, SERVICE)
        + f"\nuser {SIMULATOR}\ntopic write {topic_prefix}/up/#\ntopic read $SYS/#\n"
        + f"\nuser {WATCHER}\ntopic read {topic_prefix}/alerts/#\n"
    )
    with tls_mosquitto(pki, tmp_path, topic_prefix, acl) as broker:
        yield broker


def _watch(cfg: MqttConfig, topic: str) -> tuple[paho.Client, queue.SimpleQueue[Any]]:
    """A subscriber over TLS; its messages land in the queue once it is subscribed."""
    got: queue.SimpleQueue[Any] = queue.SimpleQueue()
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=paho.MQTTv5)
    cfg.secure_paho(client)
    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda c, u, msg: got.put(msg)
    client.connect(cfg.host, cfg.port)
    client.loop_start()
    assert subscribed.wait(10), "watcher not subscribed"
    return client, got


async def test_the_alert_sink_publishes_over_tls_and_refuses_a_wrong_ca(
    pki: Pki, tls_broker: TlsBroker
) -> None:
    prefix = f"{tls_broker.prefix}/alerts"
    watcher, got = await asyncio.to_thread(
        _watch, pki.mqtt(tls_broker.port, WATCHER), f"{prefix}/#"
    )
    event = {
        "rule": "pm25-high",
        "severity": "warning",
        "subject": "861000000000001",
        "state": "firing",
        "at": dt.datetime(2026, 1, 1, 8, tzinfo=dt.UTC),
        "value": 151.0,
    }
    cfg = pki.mqtt(tls_broker.port, SERVICE)
    sink = MqttSink(cfg.host, cfg.port, prefix, broker=cfg)
    try:
        await sink.deliver([event])  # returns once the broker acknowledged it
    finally:
        await sink.close()
    msg = await asyncio.to_thread(got.get, True, 10)
    watcher.disconnect()
    watcher.loop_stop()
    assert msg.topic == f"{prefix}/warning/pm25-high/861000000000001"
    assert json.loads(msg.payload) == event_json(event)
    wrong = pki.mqtt(tls_broker.port, SERVICE, ca=pki.wrong_ca)
    refused = MqttSink(wrong.host, wrong.port, prefix, broker=wrong, timeout_s=3)
    try:
        with pytest.raises(ConnectionError, match="not connected"):
            await refused.deliver([event])
    finally:
        await refused.close()


def _scenario(prefix: str) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "tls-fleet",
            "seed": 3,
            "duration_s": 10,
            "speed": "max",
            "prefix": prefix,
            "groups": [
                {"name": "env", "model": "nbiot-env", "count": 20, "interval_s": 2},
                {"name": "lights", "model": "streetlight", "count": 10, "interval_s": 2},
            ],
        }
    )


def _over_tls(settings: Settings, pki: Pki, broker: TlsBroker, who: str) -> Settings:
    """``settings`` with the broker reached over TLS as ``who``."""
    tls = pki.mqtt(broker.port, who)
    mqtt = settings.mqtt.model_copy(
        update={
            k: getattr(tls, k)
            for k in ("port", "tls", "tls_ca_file", "tls_cert_file", "tls_key_file")
        }
        | {"tls_server_name": "broker.test"}
    )
    return settings.model_copy(update={"mqtt": mqtt})


async def test_simulator_record_and_replay_run_over_tls(
    pki: Pki, tls_broker: TlsBroker, pg_url: str, broker: Any, tmp_path: Path
) -> None:
    prefix = tls_broker.prefix
    plain = settings_for(pg_url, broker, prefix, pipeline={"flush_interval_ms": 50})
    service = _over_tls(plain, pki, tls_broker, SERVICE)
    fleet = _over_tls(plain, pki, tls_broker, SIMULATOR)
    sent = tmp_path / "sent.cfxrec"
    async with running(service) as svc:
        fleet.http.port = svc.http_port
        first = await asyncio.to_thread(
            run_scenario,
            _scenario(prefix),
            fleet,
            do_register=True,
            record_path=sent,
            metrics_port=svc.http_port,
        )
    assert first["lost"] == 0, first
    assert first["stored"] == first["sent"] == 150

    query(pg_url, "TRUNCATE env_readings, streetlight_status, dead_letters")
    captured = tmp_path / "captured.cfxrec"
    recording = threading.Event()
    async with running(service) as svc:
        fleet.http.port = svc.http_port
        recorder = asyncio.create_task(
            asyncio.to_thread(
                record_mqtt,
                captured,
                service,  # reads uplinks with the service's certificate
                topic_filter=f"{prefix}/up/#",
                count=150,
                duration_s=120,
                on_start=lambda _: recording.set(),
            )
        )
        assert await asyncio.to_thread(recording.wait, 30), "record never subscribed"
        again = await asyncio.to_thread(replay_file, sent, fleet, speed=None)
        recorded = await recorder
    assert again["lost"] == 0, again
    assert again["stored"] == again["sent"] == 150
    assert recorded == 150
    assert sorted(f.payload for f in read_frames(captured, prefix)) == sorted(
        f.payload for f in read_frames(sent, prefix)
    )
    wrong = _over_tls(plain, pki, tls_broker, SERVICE)
    wrong = wrong.model_copy(
        update={"mqtt": wrong.mqtt.model_copy(update={"tls_ca_file": pki.wrong_ca})}
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        record_mqtt(tmp_path / "never.cfxrec", wrong, duration_s=1)
