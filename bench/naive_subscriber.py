"""Peer baseline: the naive MQTT → PostgreSQL ingestor, one INSERT (and commit) per message.

What a first version usually looks like: a paho subscriber whose ``on_message`` parses the
topic and payload and runs one autocommitted ``INSERT``; paho acknowledges the QoS 1 message
when the callback returns, so nothing acknowledged is lost. Drains a preloaded persistent
session, in its own process.

Usage: python -m bench.naive_subscriber PORT CLIENT_ID COUNT PG_URL -> prints seconds.
"""

from __future__ import annotations

import sys
import time

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TABLE = """CREATE TABLE IF NOT EXISTS naive_readings (
    time timestamptz NOT NULL, device text NOT NULL, metric text NOT NULL,
    value double precision NOT NULL)"""


def main() -> None:
    """Drain COUNT messages into naive_readings and print the elapsed seconds."""
    port, client_id, count, url = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    conn = psycopg.connect(url, autocommit=True)
    seen = 0
    start = 0.0

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        nonlocal seen, start
        if seen == 0:
            start = time.perf_counter()
        levels = msg.topic.split("/")  # bench/up/<kind>/<device>/value/<metric>
        conn.execute(
            "INSERT INTO naive_readings (time, device, metric, value) VALUES (now(), %s, %s, %s)",
            (levels[3], levels[5], float(msg.payload)),
        )
        seen += 1
        if seen >= count:
            client.disconnect()

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.on_message = on_message
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_forever()
    print(f"{time.perf_counter() - start:.6f}")
    conn.close()


if __name__ == "__main__":
    main()
