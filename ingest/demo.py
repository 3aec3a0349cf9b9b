"""``cityflux demo``: embedded PostgreSQL and broker (unless configured), the service and a
simulated fleet for a while, then a loss-accounted summary from the database itself."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from ingest.app import Service
from ingest.broker import EmbeddedBroker
from ingest.config import ENV_PREFIX, MqttProtocol, Settings
from simulators.fleet import DemoFleet, FleetReport
from storage.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)


@dataclass
class DemoEnvironment:
    """Where the demo's database and broker came from."""

    database: str
    broker: str


def _configured(section: str, config_file: Path | None) -> bool:
    prefix = f"{ENV_PREFIX}{section.upper()}__"
    if any(k.startswith(prefix) for k in os.environ):
        return True
    return config_file is not None and f"[{section}]" in config_file.read_text()


def prepare(
    settings: Settings, config_file: Path | None, data_dir: Path, stack: ExitStack
) -> DemoEnvironment:
    """Start an embedded database and broker for whatever is not configured."""
    env = DemoEnvironment("configured", "configured")
    if not _configured("database", config_file):
        pg = EmbeddedPostgres(data_dir / "postgres").start()
        stack.callback(pg.stop)
        settings.database.url = pg.url  # type: ignore[assignment]
        env.database = f"embedded PostgreSQL ({pg.bindir})"
    if not _configured("mqtt", config_file):
        broker = EmbeddedBroker(data_dir / "broker").start()
        stack.callback(broker.stop)
        settings.mqtt.host, settings.mqtt.port = "127.0.0.1", broker.port
        if not broker.supports_v5:
            settings.mqtt.protocol = MqttProtocol.V311
        env.broker = f"embedded {broker.kind}"
    settings.mqtt.client_id = f"cityflux-demo-{uuid.uuid4().hex[:8]}"
    settings.http.port = 0
    return env


def _count_stored(url: str, report: FleetReport) -> tuple[int, int, int]:
    """(frames stored, readings stored, dead letters) for this run's devices."""
    with psycopg.connect(url) as conn:
        frames, readings = conn.execute(
            "SELECT count(DISTINCT (r.device_id, r.time)), count(*) FROM env_readings r "
            "JOIN devices d ON d.id = r.device_id WHERE d.external_id = ANY(%s)",
            (report.devices,),
        ).fetchone() or (0, 0)
        dead = conn.execute(
            "SELECT count(*) FROM dead_letters WHERE device = ANY(%s)", (report.devices,)
        ).fetchone()
    return int(frames), int(readings), int(dead[0] if dead else 0)


async def _run(settings: Settings, duration_s: float, rate: float) -> dict[str, Any]:
    service = Service(settings)
    task = asyncio.create_task(service.run(), name="demo.service")
    started = asyncio.ensure_future(service.started.wait())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert service.mqtt is not None
    assert service.pipeline is not None
    await service.mqtt.wait_connected(30)
    fleet = DemoFleet(
        settings.mqtt.host,
        settings.mqtt.port,
        v5=settings.mqtt.protocol is MqttProtocol.V5,
        rate_per_s=rate,
    )
    t0 = time.monotonic()
    # The fleet runs in its own process so that it does not share the service's GIL.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        report = await asyncio.get_running_loop().run_in_executor(pool, fleet.run, duration_s)
    deadline = time.monotonic() + 60
    pipe = service.pipeline
    while (pipe.stats.received < report.acked or pipe.inflight) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - t0
    service.stop()
    await task
    url = settings.database.url.get_secret_value()
    stored, readings, dead = await asyncio.to_thread(_count_stored, url, report)
    return {
        "sent": report.sent,
        "acknowledged": report.acked,
        "stored": stored,
        "readings": readings,
        "rejected": dead,
        "rejected_expected": report.malformed_acked,
        "lost": max(0, report.valid_acked - stored),
        "msgs_per_s": round(stored / elapsed, 1) if elapsed else 0.0,
        "readings_per_s": round(readings / elapsed, 1) if elapsed else 0.0,
        "devices": len(report.devices),
        "duration_s": round(elapsed, 2),
        "backend": service.backend.value if service.backend else None,
    }


def run_demo(
    settings: Settings,
    config_file: Path | None,
    duration_s: float,
    rate: float,
    data_dir: Path | None,
) -> dict[str, Any]:
    """Run the whole demo and return its summary."""
    with ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cityflux-")))
        env = prepare(settings, config_file, data_dir, stack)
        summary = asyncio.run(_run(settings, duration_s, rate))
        summary["database"], summary["broker"] = env.database, env.broker
        return summary
