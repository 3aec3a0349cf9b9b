"""Composition root: the one place that wires the stages together from configuration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn

from decoders.registry import DecoderRegistry, load_registry
from device_registry.resolver import DeviceResolver
from device_registry.upkeep import run_upkeep
from ingest.config import Settings
from ingest.http import create_app
from ingest.metrics import Metrics
from ingest.mqtt import MqttListener
from ingest.pipeline import Pipeline
from storage.ddl import Backend
from storage.migrate import migrate
from storage.writer import BatchWriter, RetryPolicy

log = logging.getLogger(__name__)


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal capture: the service owns SIGTERM/SIGINT and stops
    the HTTP endpoint last, after draining."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signal handling to the service."""
        yield


@dataclass
class Service:
    """A running cityflux service (what ``cityflux serve`` and the demo start)."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    decoders: DecoderRegistry = field(default_factory=load_registry)
    backend: Backend | None = None
    pipeline: Pipeline | None = None
    mqtt: MqttListener | None = None
    http_port: int | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _draining: bool = False

    def stop(self) -> None:
        """Ask the service to drain and stop (what SIGTERM does)."""
        self._stop.set()

    def readiness(self) -> dict[str, bool]:
        """Per-dependency readiness, for /readyz."""
        return {
            "mqtt": self.mqtt is not None and self.mqtt.connected,
            "database": self.backend is not None,
            "accepting": not self._draining,
        }

    async def run(self) -> None:
        """Migrate, start every stage, run until ``stop``, then drain and commit."""
        s = self.settings
        conninfo = s.database.url.get_secret_value()
        self.backend = await asyncio.to_thread(
            migrate, conninfo, self.decoders.tables(), s.database.timescaledb
        )
        self.metrics.storage_info.labels(self.backend.value).set(1)
        retry = RetryPolicy(s.database.retry_initial_ms / 1000, s.database.retry_max_ms / 1000)
        writers = [
            BatchWriter(
                conninfo,
                s.database.write_method,
                retry,
                on_retry=lambda _e: self.metrics.db_retries.inc(),
            )
            for _ in range(s.database.writers)
        ]
        resolver = DeviceResolver(s.pipeline.unknown_devices)
        await resolver.load(await writers[0].connection())
        self.pipeline = Pipeline(
            self.decoders,
            resolver,
            writers,
            self.metrics,
            batch_max_frames=s.pipeline.batch_max_frames,
            flush_interval_ms=s.pipeline.flush_interval_ms,
            max_inflight_frames=s.pipeline.max_inflight_frames,
        )
        self.mqtt = MqttListener(s.mqtt, self.pipeline, self.metrics)
        server = _HttpServer(
            uvicorn.Config(
                create_app(self.metrics, self.readiness, conninfo),
                host=s.http.host,
                port=s.http.port,
                log_level="warning",
                lifespan="off",
            )
        )
        async with asyncio.TaskGroup() as tg:
            pipe_task = tg.create_task(self.pipeline.run(), name="ingest.pipeline")
            mqtt_task = tg.create_task(self.mqtt.run(), name="ingest.mqtt")
            registry_stop = asyncio.Event()
            registry_task = tg.create_task(
                run_upkeep(
                    conninfo,
                    s.registry,
                    resolver,
                    self.pipeline.last_seen,
                    self.metrics,
                    registry_stop,
                ),
                name="device_registry.upkeep",
            )
            http_task = tg.create_task(server.serve(), name="ingest.http")
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no start event
                await asyncio.sleep(0.01)
            self.http_port = server.servers[0].sockets[0].getsockname()[1]
            log.info(
                "cityflux serving: /metrics on http://%s:%d, backend %s",
                s.http.host,
                self.http_port,
                self.backend,
            )
            self.started.set()
            await self._stop.wait()
            log.info("stopping: draining %d uncommitted frames", self.pipeline.inflight)
            self._draining = True
            self.mqtt.stop_reading()
            await self.pipeline.close()
            await pipe_task
            await self.mqtt.stop()
            await mqtt_task
            registry_stop.set()
            await registry_task
            server.should_exit = True
            await http_task
        log.info(
            "stopped cleanly: %d frames stored, %d rejected",
            self.pipeline.stats.stored_frames,
            self.pipeline.stats.rejected,
        )


async def serve(settings: Settings) -> None:
    """Run the service until SIGTERM or SIGINT, then drain and exit."""
    service = Service(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()
