"""Shared bench plumbing: a private broker tuned for queueing, preloading, medians."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.broker import MOSQUITTO_CONF
from simulators.mqtt_publisher import BulkPublisher
from storage.embedded import EmbeddedPostgres, free_port, reachable

if TYPE_CHECKING:
    from ingest.settings import Settings

BENCH_BROKER_CONF = MOSQUITTO_CONF + "queue_qos0_messages true\n"
DRAIN_TIMEOUT_S = 600.0


class MissingToolError(RuntimeError):
    """A program the bench needs is not installed; the message says which package has it."""


class BenchBroker:
    """A private mosquitto that queues QoS 0 and 1 for offline persistent sessions."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        conf = work / "mosquitto.conf"
        conf.write_text(BENCH_BROKER_CONF.format(port=self.port))
        exe = shutil.which("mosquitto")
        if exe is None:
            raise MissingToolError(
                "the bench runs its own broker: mosquitto not found (Debian package mosquitto)"
            )
        log = work / "mosquitto.log"
        self._proc = subprocess.Popen([exe, "-c", str(conf)], stderr=log.open("wb"))
        time.sleep(0.3)
        if self._proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {log.read_text()}")

    def stop(self) -> None:
        """Terminate it."""
        self._proc.terminate()
        self._proc.wait(10)


def service_settings() -> Settings:
    """The settings a drained service will have, loaded as the drains load them (the
    environment's ``CITYFLUX_*`` included), for the limits to take the same terms: the raw
    COPY's connections, the C client's QoS 1 window. The database URL is a placeholder."""
    from ingest.settings import load_settings

    url = "postgresql://bench@127.0.0.1/bench"  # any: only the other sections are read
    return load_settings(None, database={"url": url, "timescaledb": "off"})


def empty(url: str, *tables: str) -> None:
    """Empty these tables and checkpoint, so every timed run (cityflux's and its limit's
    alike) starts with no write-ahead log owed: a checkpoint falling inside one run and not
    the next made the per-run ratios swing by ±0.15. Without the privilege to checkpoint (a
    server given by $CITYFLUX_BENCH_PG_URL), the tables are only emptied."""
    with psycopg.connect(url, autocommit=True) as conn:
        if tables:
            conn.execute(f"TRUNCATE {', '.join(tables)}")
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")


def create_session(port: int, client_id: str, topic: str, qos: int) -> None:
    """Connect once with a persistent session and subscribe, then leave (frames queue up)."""
    done = threading.Event()
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.on_subscribe = lambda *a: done.set()
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.subscribe(topic, qos)
    client.loop_start()
    done.wait(10)
    client.disconnect()
    client.loop_stop()


def end_session(port: int, client_id: str) -> None:
    """Delete a session the bench made (Clean Start, Session Expiry 0). A session left behind
    stays subscribed to ``bench/up/#``: the broker would queue every later preload and live
    publish into it too, slowing the measurements after it (and "nobody subscribed" would
    not hold for the fleet alone)."""
    done = threading.Event()
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    client.on_connect = lambda *a: done.set()
    client.connect("127.0.0.1", port, clean_start=True, properties=props)
    client.loop_start()
    try:
        if not done.wait(10):
            raise RuntimeError(f"the broker did not answer the CONNECT ending session {client_id}")
        client.disconnect()
    finally:
        client.loop_stop()


def preload(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish every message at QoS 1 (so the broker drops none) and wait for all acks."""
    pub = BulkPublisher("127.0.0.1", port, f"preload-{uuid.uuid4().hex[:8]}").connect()
    try:
        for topic, payload in messages:
            pub.publish(topic, payload)
        pub.drain(120)
    finally:
        pub.close()
    acked = pub.acked[0]
    if acked != len(messages):
        raise RuntimeError(f"broker acknowledged {acked} of {len(messages)} preloaded frames")


class Drain(NamedTuple):
    """One drain of a preloaded session: its clock and its accounting."""

    elapsed_s: float  # from the first frame the pipeline took to the last commit
    stored: int  # frames stored (not dead-lettered)
    acknowledged: int  # PUBACKs the service wrote


async def drain_preloaded(settings: Settings, n: int, **fields: Any) -> Drain:
    """Run the service until it has taken and committed ``n`` preloaded frames. The clock is
    the pipeline's own: from the receive time of the first frame it took to its last commit
    (recorded inside it, so neither the service's start-up nor a poller's sampling counts).
    ``fields`` are given to ``Service`` (e.g. ``decoders``)."""
    from ingest.service import Service

    service = Service(settings, **fields)
    task = asyncio.create_task(service.run())
    await service.started.wait()
    assert service.pipeline is not None
    pipe = service.pipeline
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while pipe.stats.received < n or pipe.inflight:
        if time.monotonic() > deadline:  # frames the broker never delivered: say so, not hang
            service.stop()
            await task
            raise RuntimeError(
                f"drain: the pipeline took {pipe.stats.received} of {n} preloaded frames "
                f"in {DRAIN_TIMEOUT_S:.0f} s"
            )
        await asyncio.sleep(0.01)
    st = pipe.stats
    elapsed = (st.last_commit_us - st.first_received_us) / 1e6
    acked = int(getattr(service.mqtt, "pubacks_sent", st.acked))
    service.stop()
    await task
    return Drain(elapsed, st.stored_frames, acked)


def paired_ratio(
    ours: list[dict[str, Any]], theirs: list[dict[str, Any]], key: str
) -> float | None:
    """The median of ``ours[i][key] / theirs[i][key]`` over the runs both measured (each run
    against the one beside it), or None when the other side never ran."""
    ratios = [a[key] / b[key] for a, b in zip(ours, theirs, strict=True) if b.get(key)]
    return statistics.median(ratios) if ratios else None


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    """Median and all values of ``runs`` calls."""
    values = [fn() for _ in range(runs)]
    return statistics.median(values), values


def bench_database(tmp: Path) -> tuple[str, Callable[[], None]]:
    """A fresh database for one bench (on $CITYFLUX_BENCH_PG_URL's server, the local
    PostgreSQL on 5432, or a throwaway cluster in ``tmp``) and the function that drops it."""
    admin = os.environ.get("CITYFLUX_BENCH_PG_URL")
    cluster = None
    if admin is None:
        if reachable("127.0.0.1", 5432):
            admin = "postgresql://postgres@127.0.0.1:5432/postgres"
        else:
            cluster = EmbeddedPostgres(tmp / "pg").start()
            admin = cluster.url
    name = f"cityflux_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if cluster is not None:
            cluster.stop()

    return admin.rpartition("/")[0] + "/" + name, drop
