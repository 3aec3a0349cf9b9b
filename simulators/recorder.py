"""``cityflux record``: capture the uplinks passing through the broker into a recording.

A plain MQTT 5 subscription (never a shared one, so it takes a copy without taking frames from
the service's workers), QoS 1; each message is written with its topic and receive time.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from ingest.settings import Settings
from simulators.recording import RecordWriter

SUBSCRIBE_TIMEOUT_S = 30.0


def record_mqtt(
    out: Path,
    settings: Settings,
    *,
    topic_filter: str | None = None,
    duration_s: float | None = None,
    count: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_start: Callable[[str], None] = lambda _: None,
) -> int:
    """Record until ``duration_s``, ``count`` frames or ``should_stop``; frames recorded.
    ``on_start`` is called once the broker acknowledged the subscription (nothing published
    after it is missed); ``ConnectionError`` if it does not within ``SUBSCRIBE_TIMEOUT_S``."""
    m = settings.mqtt
    topic = topic_filter or m.topics[0]
    got: queue.SimpleQueue[tuple[int, str, bytes]] = queue.SimpleQueue()

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        got.put((time.time_ns() // 1000, msg.topic, bytes(msg.payload)))

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"cityflux-record-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    m.secure_paho(client)  # user name, password, TLS
    subscribed = threading.Event()
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(m.host, m.port)  # TLS: the handshake happens here (ssl.SSLError if refused)
    client.loop_start()
    if not subscribed.wait(SUBSCRIBE_TIMEOUT_S):
        client.disconnect()
        client.loop_stop()
        raise ConnectionError(f"mqtt://{m.host}:{m.port} did not acknowledge {topic}")
    on_start(topic)
    start = time.monotonic()
    with RecordWriter(out, {"recorded_from": f"mqtt://{m.host}:{m.port}/{topic}"}) as rec:
        try:
            while not should_stop():
                if duration_s is not None and time.monotonic() - start >= duration_s:
                    break
                if count is not None and rec.count >= count:
                    break
                try:
                    t, src, payload = got.get(timeout=0.1)
                except queue.Empty:
                    continue
                rec.write(t, "mqtt", src, payload)
        finally:
            client.disconnect()
            client.loop_stop()
            while count is None or rec.count < count:  # what arrived before the stop
                try:
                    t, src, payload = got.get_nowait()
                except queue.Empty:
                    break
                rec.write(t, "mqtt", src, payload)
        return rec.count
