"""The live peer: mq-bridge (PyPI ``mq-bridge``, Rust core) routing MQTT tag-read events into
typed PostgreSQL rows, configured as its own documentation and tests configure an
MQTT → sqlx route (tokens ``${payload:<field>}`` bound per row, batches of 1,024, four
concurrent tasks, persistent session, acknowledged after the insert).

Usage: ``python -m bench.mqbridge_peer PORT PG_URL TABLE [CLIENT_ID]`` — creates ``TABLE``,
prints READY once the route is running, runs until stdin closes. Needs the ``bench`` extra
(``pip install 'cityflux[bench]'``); the runtime never imports it.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import psycopg

TOPIC = "bench/up/gantry/+/tagread-json"


def create_table(url: str, table: str) -> None:
    """The typed table the route inserts into (as cityflux's ``tag_reads``, without the
    registry's device id)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(
            f"CREATE TABLE {table} (time timestamptz NOT NULL, reader text NOT NULL, "
            "antenna smallint NOT NULL, epc text NOT NULL, rssi smallint, count integer, "
            # the bench's clock, kept by the database: when each row went in (the last one
            # ends the run; no poller has to catch it, and none loads the machine meanwhile)
            "stored_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )


def last_insert_us(conn: psycopg.Connection[Any], table: str) -> int:
    """When the latest row went into ``table`` (epoch µs, the database's clock), 0 if none."""
    row = conn.execute(
        f"SELECT coalesce((extract(epoch FROM max(stored_at)) * 1e6)::bigint, 0) FROM {table}"
    ).fetchone()
    return int(row[0]) if row else 0


def route_config(port: int, url: str, table: str, client_id: str) -> dict[str, Any]:
    """The route: MQTT (QoS 1, persistent session) → sqlx INSERT with typed casts."""
    insert = (
        f"INSERT INTO {table} (time, reader, antenna, epc, rssi, count) VALUES ("
        "to_timestamp(${payload:first_seen}::float8 / 1000), ${payload:reader}, "
        "${payload:antenna}::smallint, ${payload:epc}, ${payload:rssi}::smallint, "
        "${payload:count}::integer)"
    )
    return {
        "concurrency": 4,
        "batch_size": 1024,
        "input": {
            "mqtt": {
                "url": f"tcp://127.0.0.1:{port}",
                "topic": TOPIC,
                "client_id": client_id,
                "qos": 1,
                "clean_session": False,
                "session_expiry_interval": 3600,
                "queue_capacity": 10_000,
            }
        },
        "output": {"sqlx": {"url": url, "table": table, "insert_query": insert}},
    }


def main() -> None:
    """Run the route until stdin closes."""
    import mq_bridge

    port, url, table = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    cid = sys.argv[4] if len(sys.argv) > 4 else f"mqb-{time.time_ns()}"
    create_table(url, table)
    route = mq_bridge.Route.from_config(route_config(port, url, table, cid), name="bench")
    route.start()
    time.sleep(1.0)  # the route subscribes on its own thread
    print("READY", flush=True)
    sys.stdin.read()
    route.stop()


if __name__ == "__main__":
    main()
