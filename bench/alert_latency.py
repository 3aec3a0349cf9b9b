"""End-to-end alert latency: a frame's arrival to its alert row, at half the maximum rate.

Method, in one run on one broker and database:
1. maximum rate: a persistent session is preloaded with N single-reading SenML frames
   (1,000 devices, PM2.5 jumping across a threshold rule's lines) and the service, rules
   loaded, drains it: frames/s to the last commit;
2. latency: a publisher in its own process sends fresh frames at half that rate for
   ``--seconds``; each frame's time (``bt``, µs precision) is the wall clock when it is
   published, so ``alert_events.recorded_at − time`` is the time from publication — an
   upper bound of the time from receipt — to the alert row being written in the batch's
   transaction (the commit follows within the same batch).

``python -m bench.alert_latency [--seconds S] [--frames N]`` prints p50/p95/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from ingest.service import Service
from ingest.settings import load_settings
from ingest.topics import uplink
from simulators.publisher import publish_confirmed

from .common import BenchBroker, create_session, drain_preloaded, preload

TOPIC = "lat/up/+/+/+"
RULES = """
rules:
  - name: pm25-high
    table: env_readings
    where: metric == "pm2_5"
    when: value > 75
    clear: value < 60
"""
DEVICES = 1000


def frame(i: int, t: float) -> tuple[str, bytes]:
    """Device i's frame at wall time t: PM2.5 high on every 7th frame of a device."""
    dev = f"lat-{i % DEVICES:04d}"
    high = (i // DEVICES) % 7 == 3
    pack = [{"bn": dev, "bt": t, "n": "pm2_5", "u": "ug/m3", "v": 90.0 if high else 20.0}]
    return uplink("env", dev, "senml-json", "lat"), json.dumps(pack).encode()


def _publish(port: int, rate: float, seconds: float) -> int:
    """Publish fresh frames at ``rate``/s for ``seconds`` (runs in its own process)."""

    def stream() -> Any:
        start = time.time()
        i = 0
        while time.time() - start < seconds:
            yield frame(i, time.time())
            i += 1

    return publish_confirmed("127.0.0.1", port, stream(), qos=1, rate_per_s=rate, window=2000)


def _settings(port: int, url: str, rules: Path, cid: str) -> Any:
    return load_settings(
        None,
        mqtt={"host": "127.0.0.1", "port": port, "client_id": cid, "topics": [TOPIC], "qos": 1},
        database={"url": url, "timescaledb": "off"},
        alerts={"rules_file": str(rules), "mqtt_topic_prefix": ""},
        pipeline={"unknown_devices": "auto-provision"},
        http={"port": 0},
        log_level="WARNING",
    )


async def _max_rate(port: int, url: str, rules: Path, n: int) -> float:
    cid = f"latmax-{time.time_ns()}"
    create_session(port, cid, TOPIC, 1)
    t0 = time.time() - 86400  # yesterday: no overlap with the live phase's frame times
    preload(port, [frame(i, t0 + i / 1000) for i in range(n)])
    elapsed, *_ = await drain_preloaded(_settings(port, url, rules, cid), n)
    return n / elapsed


async def _latency(port: int, url: str, rules: Path, rate: float, seconds: float) -> dict[str, Any]:
    cid = f"latlive-{time.time_ns()}"
    service = Service(_settings(port, url, rules, cid))
    task = asyncio.create_task(service.run())
    await service.started.wait()
    assert service.mqtt is not None
    await service.mqtt.wait_connected(30)
    since = time.time()
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        sent = await loop.run_in_executor(pool, _publish, port, rate, seconds)
    assert service.pipeline is not None
    while service.pipeline.inflight:
        await asyncio.sleep(0.01)
    service.stop()
    await task
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), "
            "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lat), max(lat) "
            "FROM (SELECT extract(epoch FROM recorded_at - time) AS lat FROM alert_events "
            "      WHERE time >= to_timestamp(%s)) x",
            (since,),
        ).fetchone()
    assert row is not None
    count, pct, worst = row
    return {
        "frames_sent": sent,
        "rate_msgs_per_s": round(sent / seconds, 1),
        "alert_events": int(count),
        "latency_p50_s": float(pct[0]),
        "latency_p95_s": float(pct[1]),
        "latency_p99_s": float(pct[2]),
        "latency_max_s": float(worst),
    }


def run(url: str, broker: BenchBroker, frames: int, seconds: float) -> dict[str, Any]:
    """Both phases; the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(RULES)
        top = asyncio.run(_max_rate(broker.port, url, rules, frames))
        out = asyncio.run(_latency(broker.port, url, rules, top / 2, seconds))
    out["max_msgs_per_s_with_rules"] = round(top, 1)
    return out


def main() -> None:
    """Command-line entry point (a private broker; the machine's PostgreSQL)."""
    from bench.common import bench_database

    ap = argparse.ArgumentParser(prog="python -m bench.alert_latency")
    ap.add_argument("--frames", type=int, default=60_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = bench_database(Path(tmp))
        broker = BenchBroker(Path(tmp) / "broker")
        try:
            from decoders.registry import load_registry
            from storage.migrate import TimescaleMode, migrate

            migrate(url, load_registry().tables(), TimescaleMode.OFF)
            print(json.dumps(run(url, broker, args.frames, args.seconds)))
        finally:
            broker.stop()
            drop()


if __name__ == "__main__":
    main()
