"""What the broker says about itself: Mosquitto's count of dropped PUBLISH messages.

A broker acknowledges a QoS 1 PUBLISH when it has it, not when the subscriber has stored it;
if the subscriber's session queue is full (Mosquitto's ``max_queued_messages``, 1000 by
default) further messages are dropped, and no acknowledgement tells the device. Mosquitto
counts them in ``$SYS/broker/publish/messages/dropped`` (retained, refreshed every
``sys_interval``, 10 s by default); the report shows the difference over the run, so a loss
caused by the broker's configuration is named as such. Other brokers: None.
"""

from __future__ import annotations

import contextlib
import threading
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from core.mqtt import MqttConfig

DROPPED = "$SYS/broker/publish/messages/dropped"


def dropped_messages(
    host: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
    tls: MqttConfig | None = None,
    timeout_s: float = 3.0,
) -> int | None:
    """The broker's dropped-message count now, or None if it does not publish one."""
    got: list[int] = []
    done = threading.Event()

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            got.append(int(msg.payload))
        done.set()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"cityflux-sys-{uuid.uuid4().hex[:8]}"
    )
    if username:
        client.username_pw_set(username, password)
    if tls is not None:
        tls.secure_paho(client)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(DROPPED, 0)
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return None
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None
