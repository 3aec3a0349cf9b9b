"""Publish a list of frames over MQTT and count what the broker acknowledged.

Used by the tests and the benches as the device side. The number of frames sent but not yet
acknowledged is kept under ``window``: paho rescans its whole outgoing queue on every PUBACK,
so a long queue makes publishing quadratic.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def publish_confirmed(
    host: str,
    port: int,
    messages: Iterable[tuple[str, bytes]],
    *,
    v5: bool = True,
    qos: int = 1,
    rate_per_s: float | None = None,
    stop: threading.Event | None = None,
    window: int = 2000,
    timeout_s: float = 300.0,
) -> int:
    """Publish (topic, payload) pairs; return how many the broker acknowledged (QoS 1) or
    how many were sent (QoS 0)."""
    acked = 0
    lock = threading.Lock()

    def on_publish(*_: object) -> None:
        nonlocal acked
        with lock:
            acked += 1

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4().hex[:10]}",
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
    )
    client.max_inflight_messages_set(min(window, 65_535))
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    start = time.monotonic()
    deadline = start + timeout_s
    sent = 0
    try:
        for topic, payload in messages:
            if stop is not None and stop.is_set():
                break
            client.publish(topic, payload, qos=qos)
            sent += 1
            if rate_per_s:
                ahead = sent / rate_per_s - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            while qos and sent - acked > window and time.monotonic() < deadline:
                time.sleep(0.001)
        while qos and acked < sent and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        client.disconnect()
        client.loop_stop()
    return acked if qos else sent
