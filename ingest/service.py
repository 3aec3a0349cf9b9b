"""Composition root: the one place that wires the stages together from configuration."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import psycopg
import uvicorn

from core.metrics import Metrics
from core.mqtt import MqttProtocol
from decoders.registry import DecoderRegistry, load_registry
from device_registry.frameloss import FrameLoss
from device_registry.gaps import GapDetector
from device_registry.resolver import DeviceResolver
from device_registry.upkeep import run_upkeep
from ingest.coap import CoapListener
from ingest.coap_dtls import PskStore, check_dtls_available
from ingest.coap_oscore import DeviceKeyStore
from ingest.http import AlertsApi, create_app
from ingest.lwm2m import Lwm2mMode, Lwm2mServer
from ingest.mqtt import MqttListener
from ingest.mqtt_v5 import Mqtt5Listener
from ingest.pipeline import Pipeline
from ingest.settings import CoapMode, DtlsMode, Settings
from parking.occupancy import OccupancyStage
from storage.ddl import Backend
from storage.migrate import migrate
from storage.writer import BatchWriter, RetryPolicy

if TYPE_CHECKING:
    from alerts.stage import AlertStage

log = logging.getLogger(__name__)
DB_CHECK_S = 2.0  # how often readiness asks the database
RETIRE_IDLE_S = 2.0  # a retiring worker's session is empty after this long without a frame


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
    mqtt: MqttListener | Mqtt5Listener | None = None
    coap: CoapListener | None = None
    lwm2m: Lwm2mServer | None = None
    coaps: CoapListener | None = None  # coap.dtls = "psk": the DTLS listener
    alerts: AlertStage | None = None
    frame_loss: FrameLoss | None = None
    http_port: int | None = None
    worker: int = 0  # index among settings.workers processes (ingest/workers.py)
    retire: bool = False  # take what this worker's MQTT session holds, delete it, stop
    started: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _draining: bool = False
    _writers: list[BatchWriter] = field(default_factory=list)
    _db_ok: bool = False

    def stop(self) -> None:
        """Ask the service to drain and stop (what SIGTERM does)."""
        self._stop.set()

    def reload_rules(self) -> None:
        """Reload the alert rules file (what SIGHUP does)."""
        if self.alerts is not None:
            self.alerts.request_reload()

    def _rules_api(self) -> AlertsApi | None:
        if self.alerts is None:
            return None
        stage = self.alerts

        def rules() -> list[dict[str, object]]:
            return [
                {
                    "name": r.name,
                    "kind": r.kind,
                    "tables": list(r.tables),
                    "severity": r.rule.severity.value,
                    "description": r.rule.description,
                    "open_alerts": stage.engine.runtimes[r.name].states.active,
                }
                for r in stage.engine.rules
            ]

        return AlertsApi(rules, self.metrics.alerts_acknowledged.inc)

    def readiness(self) -> dict[str, bool]:
        """Per-dependency readiness, for /readyz."""
        return {
            "mqtt": self.mqtt is not None and self.mqtt.connected,
            **(
                {}
                if self.settings.coap.mode is CoapMode.OFF
                else {"coap": self.coap is not None and self.coap.bound.is_set()}
            ),
            **(
                {}
                if self.settings.coap.dtls is DtlsMode.OFF
                else {"coaps": self.coaps is not None and self.coaps.bound.is_set()}
            ),
            "database": self.backend is not None
            and self._db_ok
            and all(w.reachable for w in self._writers),
            "accepting": not self._draining,
        }

    def _ready(self, check: str) -> float:
        return float(self.readiness()[check])

    async def run(self) -> None:
        """Migrate, start every stage, run until ``stop``, then drain and commit."""
        s = self.settings
        conninfo = s.database.url.get_secret_value()
        self.backend = await asyncio.to_thread(
            migrate, conninfo, self.decoders.tables(), s.database.timescaledb
        )
        self.metrics.storage_info.labels(self.backend.value).set(1)
        self.metrics.queue_capacity.set(s.pipeline.max_inflight_frames)
        for check in self.readiness():  # read at scrape time, as /readyz answers
            self.metrics.ready.labels(check).set_function(functools.partial(self._ready, check))
        self._db_ok = True  # it just answered the migrations
        retry = RetryPolicy(s.database.retry_initial_ms / 1000, s.database.retry_max_ms / 1000)
        writers = self._writers = [
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
        # read at scrape time: tools that register devices wait for the index to catch up
        self.metrics.devices_registered.set_function(lambda: len(resolver.index))
        self.metrics.registry_watermark.set_function(
            lambda: resolver.watermark.timestamp() if resolver.watermark else 0.0
        )
        self.frame_loss = FrameLoss(
            resolver, self.metrics, GapDetector(max_gap=s.registry.frame_loss_max_gap)
        )
        await self.frame_loss.load(await writers[0].connection())
        if s.mqtt.shared_group:
            log.warning(
                "frame loss: with mqtt.shared_group the broker splits each device's frames "
                "between the workers, and each worker's detector counts the frames the others "
                "received as missing; do not trust frame loss figures or frame_loss alerts "
                "(docs/design/0011-frame-loss.md)"
            )
        if s.alerts.rules_file is not None:
            from alerts.stage import AlertStage

            self.alerts = AlertStage(
                s.alerts, self.decoders.tables(), conninfo, self.metrics, s.mqtt
            )
            resolver.on_change.append(self.alerts.engine.attributes.forget_changed)
            await self.alerts.restore(await writers[0].connection())
        self.pipeline = Pipeline(
            self.decoders,
            resolver,
            writers,
            self.metrics,
            batch_max_frames=s.pipeline.batch_max_frames,
            flush_interval_ms=s.pipeline.flush_interval_ms,
            max_inflight_frames=s.pipeline.max_inflight_frames,
            alerts=self.alerts,
            occupancy=OccupancyStage(s.parking),
            flush_by_transport={
                "coap": s.coap.flush_interval_ms,
                "lwm2m": s.coap.flush_interval_ms,
            },
            max_frame_bytes=s.pipeline.max_frame_bytes,
            frame_loss=self.frame_loss,
        )
        if s.mqtt.protocol is MqttProtocol.V5:
            self.mqtt = Mqtt5Listener(s.mqtt, self.pipeline, self.metrics, retire=self.retire)
        else:  # MQTT 3.1.1 brokers (the embedded amqtt fallback): paho
            self.mqtt = MqttListener(s.mqtt, self.pipeline, self.metrics)
        profiles = resolver.profiles

        def kind_decoders(kind: str) -> list[str]:
            return [dec for (k, dec) in profiles if k == kind]

        # LwM2M on coap:// and coaps:// alike (docs/design/0012-lwm2m-server.md)
        if s.lwm2m.mode is Lwm2mMode.SERVER:

            def resolve(endpoint: str) -> int:
                ids = resolver.index.resolve(np.array([endpoint.encode()], dtype=np.bytes_))
                return int(ids[0])

            self.lwm2m = Lwm2mServer(
                s.lwm2m,
                self.pipeline,
                self.metrics,
                self.decoders,
                conninfo,
                resolve,
                secured=s.coap.mode is CoapMode.OSCORE or s.coap.dtls is not DtlsMode.OFF,
            )
            if self.alerts is not None:  # a lifetime is an offline limit
                self.lwm2m.on_registration.append(self.alerts.engine.attributes.forget_changed)
        if s.coap.mode is not CoapMode.OFF:
            keys = DeviceKeyStore(
                conninfo,
                max_unknown=s.coap.oscore_unknown_kids,
                lookups_per_s=s.coap.oscore_lookups_per_s,
            )
            resolver.on_change.append(keys.forget)
            self.coap = CoapListener(
                s.coap,
                self.pipeline,
                self.metrics,
                self.decoders,
                keys,
                kind_decoders,
                reuse_port=s.workers > 1,
                lwm2m=self.lwm2m,
            )
        if s.coap.dtls is not DtlsMode.OFF:
            check_dtls_available()  # refuse to start without python-mbedtls, saying so
            psks = PskStore(
                conninfo,
                max_unknown=s.coap.dtls_unknown_identities,
                lookups_per_s=s.coap.dtls_lookups_per_s,
            )
            resolver.on_change.append(psks.forget)
            self.coaps = CoapListener(
                s.coap,
                self.pipeline,
                self.metrics,
                self.decoders,
                kind_decoders=kind_decoders,
                psks=psks,
                reuse_port=s.workers > 1,
                lwm2m=self.lwm2m,
            )
        server = _HttpServer(
            uvicorn.Config(
                create_app(
                    self.metrics,
                    self.readiness,
                    conninfo,
                    self._rules_api(),
                    s.http.metrics_access,
                    parking_hold_s=s.parking.debounce_s,
                    api=self.worker == 0,  # the operator API on worker 0; metrics on each
                ),
                host=s.http.host,
                port=s.http.port,
                log_level="warning",
                log_config=None,  # uvicorn's lines through our handler: one format (log_format)
                lifespan="off",
            )
        )
        async with asyncio.TaskGroup() as tg:
            pipe_task = tg.create_task(self.pipeline.run(), name="ingest.pipeline")
            mqtt_task = tg.create_task(self.mqtt.run(), name="ingest.mqtt")
            coap_task = None
            if self.coap is not None:
                coap_task = tg.create_task(self.coap.run(), name="ingest.coap")
                await self.coap.bound.wait()
            coaps_task = None
            if self.coaps is not None:
                coaps_task = tg.create_task(self.coaps.run(), name="ingest.coaps")
                await self.coaps.bound.wait()
            lwm2m_stop = asyncio.Event()
            if self.lwm2m is not None:
                tg.create_task(self.lwm2m.run(lwm2m_stop), name="ingest.lwm2m")
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
            tg.create_task(self._watch_database(conninfo, registry_stop), name="ingest.db-watch")
            loss_stop = asyncio.Event()
            loss_task = tg.create_task(
                self.frame_loss.run(conninfo, s.registry.frame_loss_flush_s, loss_stop),
                name="device_registry.frame-loss",
            )
            alerts_stop = asyncio.Event()
            if self.alerts is not None:
                tg.create_task(self.alerts.run(alerts_stop), name="alerts")
            http_task = tg.create_task(server.serve(), name="ingest.http")
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no start event
                await asyncio.sleep(0.01)
            self.http_port = server.servers[0].sockets[0].getsockname()[1]
            log.info(
                "cityflux serving: /metrics on http://%s:%d, backend %s%s",
                s.http.host,
                self.http_port,
                self.backend,
                f", worker {self.worker} of {s.workers}" if s.workers > 1 else "",
            )
            self.started.set()
            retiring = None
            if self.retire and isinstance(self.mqtt, Mqtt5Listener):
                retiring = tg.create_task(self._retire_when_empty(self.mqtt), name="ingest.retire")
            await self._stop.wait()
            if retiring is not None:
                retiring.cancel()
            log.info("stopping: draining %d uncommitted frames", self.pipeline.inflight)
            self._draining = True
            self.mqtt.stop_reading()
            if self.coap is not None:
                self.coap.stop_reading()
            if self.coaps is not None:
                self.coaps.stop_reading()
            await self.pipeline.close()
            await pipe_task
            await self.mqtt.stop()
            await mqtt_task
            lwm2m_stop.set()
            if self.coap is not None and coap_task is not None:
                await self.coap.stop()
                await coap_task
            if self.coaps is not None and coaps_task is not None:
                await self.coaps.stop()
                await coaps_task
            registry_stop.set()
            await registry_task
            loss_stop.set()
            await loss_task
            if self.alerts is not None:
                await self.alerts.checkpoint()
            alerts_stop.set()
            server.should_exit = True
            await http_task
        log.info(
            "stopped cleanly: %d frames stored, %d rejected",
            self.pipeline.stats.stored_frames,
            self.pipeline.stats.rejected,
        )

    async def _retire_when_empty(self, mqtt: Mqtt5Listener) -> None:
        """A retiring worker: once unsubscribed, stop when no frame has come for
        ``RETIRE_IDLE_S`` and every frame is committed and acknowledged; the session is then
        deleted on the broker (nothing is left in it)."""
        await mqtt.unsubscribed.wait()
        assert self.pipeline is not None
        pipe, seen = self.pipeline, -1
        while pipe.stats.received != seen or pipe.inflight:
            seen = pipe.stats.received
            await asyncio.sleep(RETIRE_IDLE_S)
        log.info("retired: %d frames taken from the session; deleting it", seen)
        mqtt.end_session = True
        self.stop()

    async def _watch_database(self, conninfo: str, stop: asyncio.Event) -> None:
        """Keep ``readiness()['database']`` true only while the database answers (idle
        writers would not notice an outage): one query every ``DB_CHECK_S``."""
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        while not stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = None
                    conn = await asyncio.wait_for(_connect(conninfo), DB_CHECK_S)
                await asyncio.wait_for(conn.execute("SELECT 1"), DB_CHECK_S)
                self._db_ok = True
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self._db_ok:
                    log.warning("database unreachable (%s); /readyz says 503", exc)
                self._db_ok = False
                if conn is not None:
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()
                    conn = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DB_CHECK_S)
        if conn is not None:
            await conn.close()


async def _connect(conninfo: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)


async def serve(
    settings: Settings, worker: int = 0, supervisor: int | None = None, retire: bool = False
) -> None:
    """Run the service until SIGTERM or SIGINT, then drain and exit; a worker (index
    ``worker``) also drains when its ``supervisor`` process is gone; a retiring one stops
    when its session is empty."""
    service = Service(settings, worker=worker, retire=retire)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    loop.add_signal_handler(signal.SIGHUP, service.reload_rules)
    if supervisor is None:
        await service.run()
        return
    watch = asyncio.create_task(_watch_supervisor(service, supervisor), name="ingest.supervisor")
    try:
        await service.run()
    finally:
        watch.cancel()


async def _watch_supervisor(service: Service, supervisor: int) -> None:
    """Drain when the supervisor has died: a new one's workers take over the same sessions,
    and two processes on one client id would throw each other off the broker."""
    while os.getppid() == supervisor:  # noqa: ASYNC110 - no event says a parent died
        await asyncio.sleep(1.0)
    log.error("supervisor (pid %d) gone; draining and stopping", supervisor)
    service.stop()
