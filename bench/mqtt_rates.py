"""MQTT receive rates: cityflux's listener alone, and cityflux end to end.

Method: a persistent session is created, N frames are preloaded into the broker while the
subscriber is away, then the subscriber connects and drains them; the rate is N / time from
first frame to last (end to end: to the last commit). The publisher is never the bottleneck.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import NamedTuple

import psycopg

from core.metrics import Metrics
from core.mqtt import MqttConfig, QoS
from ingest.mqtt import MqttListener
from ingest.mqtt_v5 import Mqtt5Listener
from ingest.pipeline import Pausable
from ingest.settings import load_settings

from .common import Drain, create_session, drain_preloaded, empty, end_session, preload

TOPIC = "bench/up/#"


class _CountingPipeline:
    """Stands in for the pipeline to time the listener alone: counts, acks every 5,000."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.first = n, 0, 0.0
        self.max_frame_bytes = 65_536
        self.done = asyncio.Event()
        self._pending: list[int] = []
        self._sink: MqttListener | Mqtt5Listener | None = None

    def add_source(self, source: Pausable) -> None:
        """Part of the pipeline interface the listener uses."""

    def pause(self) -> None:
        """Never paused in this bench."""

    def resume(self) -> None:
        """Never paused in this bench."""

    def submit(
        self,
        fmt: str,
        transport: str,
        ack_sink: MqttListener | Mqtt5Listener,
        payload: bytes,
        source: str,
        device: str,
        kind: str,
        ack_id: int = -1,
        redelivered: bool = False,
    ) -> None:
        """Count and batch the acks like the real pipeline."""
        if self.seen == 0:
            self.first = time.perf_counter()
        self.seen += 1
        self._pending.append(ack_id)
        if len(self._pending) >= 5000 or self.seen >= self.n:
            ack_sink.release(self._pending, True)
            self._pending = []
        if self.seen >= self.n:
            self.done.set()


async def _listener_rate(port: int, cid: str, n: int, qos: int) -> float:
    cfg = MqttConfig(host="127.0.0.1", port=port, client_id=cid, topics=[TOPIC], qos=QoS(qos))
    pipe = _CountingPipeline(n)
    listener = Mqtt5Listener(cfg, pipe, Metrics())  # type: ignore[arg-type]
    task = asyncio.create_task(listener.run())
    await asyncio.wait_for(pipe.done.wait(), 600)
    elapsed = time.perf_counter() - pipe.first
    await listener.stop()
    await task
    return n / elapsed


def listener_rate(port: int, msgs: Sequence[tuple[str, bytes]], qos: int, tag: str) -> float:
    """Messages/s of cityflux's MQTT listener alone (acks released per 5,000 frames)."""
    cid = f"lst-{tag}-{time.time_ns()}"
    create_session(port, cid, TOPIC, qos)
    preload(port, list(msgs))
    try:
        return asyncio.run(_listener_rate(port, cid, len(msgs), qos))
    finally:
        end_session(port, cid)


class E2E(NamedTuple):
    """One end-to-end run: frames/s (frames sent over the pipeline's clock), frames stored,
    rows in the database, PUBACKs written, and the clock itself."""

    rate: float
    frames_stored: int
    rows_in_db: int
    acknowledged: int
    elapsed_s: float


async def _e2e_rate(port: int, pg_url: str, cid: str, n: int, qos: int) -> Drain:
    settings = load_settings(
        None,
        mqtt={"host": "127.0.0.1", "port": port, "client_id": cid, "topics": [TOPIC], "qos": qos},
        database={"url": pg_url, "timescaledb": "off"},
        http={"port": 0},
        log_level="WARNING",
    )
    return await drain_preloaded(settings, n)


def e2e_rate(port: int, pg_url: str, msgs: Sequence[tuple[str, bytes]], qos: int, tag: str) -> E2E:
    """Frames/s from MQTT to committed rows, with what was stored (env_readings and the dead
    letters are emptied first, so the count is this run's)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('env_readings')").fetchone() != (None,)
    empty(pg_url, *(("env_readings", "dead_letters") if exists else ()))
    cid = f"e2e-{tag}-{time.time_ns()}"
    create_session(port, cid, TOPIC, qos)
    preload(port, list(msgs))
    try:
        got = asyncio.run(_e2e_rate(port, pg_url, cid, len(msgs), qos))
    finally:
        end_session(port, cid)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM env_readings").fetchone()
    rows = int(row[0]) if row else 0
    return E2E(len(msgs) / got.elapsed_s, got.stored, rows, got.acknowledged, got.elapsed_s)
