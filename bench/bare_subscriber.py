"""Baseline: a bare paho-mqtt subscriber (loop_forever) draining a preloaded session.

Usage: python -m bench.bare_subscriber PORT CLIENT_ID TOPIC QOS COUNT -> prints seconds.
Paho acknowledges QoS 1 itself, as any plain subscriber would.
"""

from __future__ import annotations

import sys
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> None:
    """Drain COUNT messages and print the elapsed seconds."""
    port, client_id, topic, qos, count = (
        int(sys.argv[1]),
        sys.argv[2],
        sys.argv[3],
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    seen = 0
    start = 0.0

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        nonlocal seen, start
        if seen == 0:
            start = time.perf_counter()
        seen += 1
        if seen >= count:
            client.disconnect()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 65535
    client.on_message = on_message
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_forever()
    print(f"{time.perf_counter() - start:.6f}")
    _ = (topic, qos)


if __name__ == "__main__":
    main()
