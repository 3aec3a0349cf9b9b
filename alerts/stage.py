"""The rules engine inside the service: evaluate each batch inside its transaction, tick the
clock, reload rules, checkpoint state, deliver alerts.

Batch path (``within``, called by the writer inside the batch's transaction, after its rows):
take the alerts lock, evaluate the rules on the batch's rows, write the events; the commit
then makes rows and alerts durable together, before any frame is acknowledged — an alert is
never lost and never raised twice for the same frames. If the transaction is retried (a lost
connection), the events evaluated the first time are written again, not re-evaluated.

Background (``run``): a clock tick (offline devices, ``clear_after``, rule-file reloads —
the file's modification time, or SIGHUP), periodic checkpoints, and one dispatcher per sink.
An invalid rules file is rejected with its error logged and counted; the old rules stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from alerts import store
from alerts.config import AlertsConfig
from alerts.engine import AlertEvent, Engine
from alerts.frameloss import FrameLossRuntime
from alerts.rules import RuleSet, load_rules
from alerts.runtimes import AbsenceRuntime, MachineRuntime
from alerts.sinks import Dispatcher, MqttSink, Sink, WebhookSink
from core.access import ActorKind, Principal
from core.frames import FrameBatch
from core.metrics import Metrics
from core.mqtt import MqttConfig, MqttProtocol
from core.yamlfile import DocumentError
from decoders.base import TableSpec
from storage import audit
from storage.writer import TableWrite

log = logging.getLogger(__name__)
AConn = psycopg.AsyncConnection[Any]


@dataclass(slots=True)
class BatchAlerts:
    """What the rules made of one batch (kept across retries of its transaction)."""

    received_us: npt.NDArray[np.int64]
    events: list[AlertEvent] | None = None
    seconds: float = 0.0


@dataclass
class _Watch:
    path: Path
    mtime: float = field(default=-1.0)


def load_rule_file(path: Path, tables: Sequence[TableSpec]) -> RuleSet:
    """The rules file, validated and compiled (``DocumentError`` names file:line)."""
    return load_rules(path, {t.name: t for t in tables})


class AlertStage:
    """The engine, its persistence and its sinks, wired for the service."""

    def __init__(
        self,
        cfg: AlertsConfig,
        tables: Sequence[TableSpec],
        conninfo: str,
        metrics: Metrics,
        mqtt: MqttConfig | None = None,
    ) -> None:
        assert cfg.rules_file is not None
        self.cfg = cfg
        self._tables = tables
        self._conninfo = conninfo
        self._metrics = metrics
        self._watch = _Watch(cfg.rules_file)
        self._watch.mtime = _mtime(cfg.rules_file)
        self.engine = Engine(load_rule_file(cfg.rules_file, tables))
        metrics.alert_rules.set(len(self.engine.rules))
        self._reload = asyncio.Event()
        self._reload_cause = "file changed"
        self._uncommitted = 0
        self._late_seen: dict[str, int] = {}
        self.dispatchers = [
            Dispatcher(
                s,
                conninfo,
                metrics,
                retry_initial_s=cfg.retry_initial_ms / 1000,
                retry_max_s=cfg.retry_max_ms / 1000,
                give_up_after=cfg.webhook_give_up_after,
            )
            for s in self._sinks(mqtt)
        ]

    def _sinks(self, mqtt: MqttConfig | None) -> list[Sink]:
        sinks: list[Sink] = []
        if mqtt is not None and self.cfg.mqtt_topic_prefix:
            sinks.append(
                MqttSink(
                    mqtt.host,
                    mqtt.port,
                    self.cfg.mqtt_topic_prefix,
                    qos=int(self.cfg.mqtt_qos),
                    v5=mqtt.protocol is MqttProtocol.V5,
                    username=mqtt.username,
                    password=mqtt.password.get_secret_value() if mqtt.password else None,
                    broker=mqtt,
                )
            )
        secret = self.cfg.webhook_secret.get_secret_value() if self.cfg.webhook_secret else None
        for url in self.cfg.webhook_urls:
            sinks.append(WebhookSink(url, secret=secret, timeout_s=self.cfg.webhook_timeout_s))
        return sinks

    # -- start-up --------------------------------------------------------------------------
    async def restore(self, conn: AConn) -> None:
        """Resume from the last checkpoint, reconciled with the alerts table."""
        saved = await store.read_saved(conn)
        restored = self.engine.restore(saved.snapshots)
        for rule in self.engine.runtimes:
            self.engine.reconcile(rule, saved.open_alerts.get(rule, []))
        for rule, marks in saved.watermarks.items():
            keys = np.array([m[0] for m in marks], dtype=np.int64)
            times = np.array([m[1] for m in marks], dtype=np.int64)
            self.engine.watermark(rule, keys, times)
        if any(isinstance(rt, AbsenceRuntime) for rt in self.engine.runtimes.values()):
            ids, seen = await store.last_seen(conn)
            ids_a = np.array(ids, dtype=np.int64)
            await self.engine.attributes.ensure(conn, ids_a)
            for rt in self.engine.runtimes.values():
                if isinstance(rt, AbsenceRuntime):
                    rt.seed(ids_a, np.array(seen, dtype=np.int64))
        opened = sum(len(v) for v in saved.open_alerts.values())
        log.info(
            "alert rules: %d loaded from %s; state restored for %d, %d open alerts",
            len(self.engine.rules),
            self.cfg.rules_file,
            len(restored),
            opened,
        )
        self._update_active()

    # -- the batch path ----------------------------------------------------------------------
    def new_note(self, batch: FrameBatch) -> BatchAlerts:
        """A holder for one batch's events."""
        return BatchAlerts(np.asarray(batch.received_us, dtype=np.int64))

    async def within(self, conn: AConn, writes: Sequence[TableWrite], note: BatchAlerts) -> None:
        """Evaluate (once) and store the batch's alert events, inside its transaction."""
        if note.events is None:
            tables = {tw.spec.name: tw.rows for tw in writes if len(tw.rows)}
            if not tables:
                note.events = []
                return
            await store.lock(conn)
            if self.engine.needs_attributes():
                ids = np.concatenate(
                    [np.asarray(r.columns["device_id"], dtype=np.int64) for r in tables.values()]
                )
                await self.engine.attributes.ensure(conn, ids)
            started = time.perf_counter()
            arrival = {
                tw.spec.name: note.received_us[tw.rows.frame_index] for tw in writes if len(tw.rows)
            }
            note.events = self.engine.evaluate(tables, arrival)
            note.seconds = time.perf_counter() - started
            self._uncommitted += 1
        elif note.events:
            await store.lock(conn)
        if note.events:
            await store.write_events(conn, note.events)

    def committed(self, note: BatchAlerts) -> None:
        """The batch's transaction committed: count, and wake the sinks."""
        if note.events is None:
            return
        self._uncommitted = max(0, self._uncommitted - 1)
        self._metrics.alert_evaluation_seconds.observe(note.seconds)
        self._published(note.events)

    def abandoned(self, note: BatchAlerts) -> None:
        """The batch's transaction was rolled back for good (the pipeline splits the batch
        to isolate a fault): its events were never stored."""
        if note.events is not None:
            self._uncommitted = max(0, self._uncommitted - 1)
            log.warning(
                "alerts: %d events of a batch that failed were not stored; the rules' state "
                "already holds that batch's rows (their parts are evaluated again as late rows)",
                len(note.events),
            )

    def _published(self, events: Sequence[AlertEvent]) -> None:
        for e in events:
            counter = self._metrics.alerts_raised if e.state == "raised" else None
            counter = counter or self._metrics.alerts_cleared
            counter.labels(e.rule, e.severity).inc()
        for name, late in self.engine.late_rows().items():
            seen = self._late_seen.get(name, 0)
            if late > seen:
                self._metrics.alert_late_rows.labels(name).inc(late - seen)
                self._late_seen[name] = late
        if events:
            self._update_active()
            for d in self.dispatchers:
                d.wake.set()

    def _update_active(self) -> None:
        for name, rt in self.engine.runtimes.items():
            self._metrics.alerts_active.labels(name, rt.rule.rule.severity.value).set(
                rt.states.active
            )

    # -- background ------------------------------------------------------------------------
    def request_reload(self) -> None:
        """Reload the rules file now (SIGHUP)."""
        self._reload.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick, reload, checkpoint and deliver until ``stop``."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._ticks(stop), name="alerts.tick")
            for i, d in enumerate(self.dispatchers):
                tg.create_task(d.run(stop), name=f"alerts.sink[{i}]")
            tg.create_task(self._checkpoints(stop), name="alerts.checkpoint")

    async def _ticks(self, stop: asyncio.Event) -> None:
        next_check = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    while not stop.is_set():
                        new = None
                        if self._reload.is_set() or loop.time() >= next_check:
                            next_check = loop.time() + self.cfg.reload_check_s
                            new = self._changed_rules()
                        await self._tick(conn, new)
                        await _sleep(stop, self._reload, self.cfg.tick_s)
            except psycopg.OperationalError as exc:
                log.warning("alerts: database unavailable (%s); clock checks paused", exc)
                await _sleep(stop, asyncio.Event(), 2.0)

    def _changed_rules(self) -> RuleSet | None:
        forced = self._reload.is_set()
        self._reload_cause = "SIGHUP" if forced else "file changed"
        self._reload.clear()
        for rt in self.engine.runtimes.values():
            wl = rt.watchlist if isinstance(rt, MachineRuntime) else None
            if wl is not None and wl.reload():
                log.info("alerts: watch list %s reloaded (%d entries)", wl.path, len(wl))
        mtime = _mtime(self._watch.path)
        if not forced and mtime == self._watch.mtime:
            return None
        self._watch.mtime = mtime
        try:
            ruleset = load_rule_file(self._watch.path, self._tables)
        except DocumentError as exc:
            self._metrics.alert_reloads.labels("error").inc()
            log.error("alerts: rules file rejected, the previous rules stay active:\n%s", exc)
            return None
        except Exception:  # a bug in loading must not stop the service either
            self._metrics.alert_reloads.labels("error").inc()
            log.exception("alerts: rules file could not be loaded; the previous rules stay")
            return None
        self._metrics.alert_reloads.labels("ok").inc()
        log.info("alerts: %d rules reloaded from %s", len(ruleset), self._watch.path)
        return ruleset

    async def _tick(self, conn: AConn, new: RuleSet | None) -> None:
        now_us = time.time_ns() // 1000
        async with conn.transaction():
            await store.lock(conn)
            events: list[AlertEvent] = []
            if new is not None:
                before = sorted(self.engine.runtimes)
                events += self.engine.replace(new, now_us)
                await audit.record_async(
                    conn,
                    Principal("cityflux", ActorKind.SERVICE),
                    "rules.reload",
                    str(self._watch.path),
                    {"rules": before},
                    {"rules": sorted(self.engine.runtimes), "trigger": self._reload_cause},
                )
                self._metrics.alert_rules.set(len(self.engine.rules))
            if self.engine.needs_attributes():
                for rt in self.engine.runtimes.values():
                    if isinstance(rt, AbsenceRuntime) and rt.states.index.size:
                        n = rt.states.index.size
                        await self.engine.attributes.ensure(conn, rt.states.key_of_slot[:n])
            for rt in self.engine.runtimes.values():
                if isinstance(rt, FrameLossRuntime) and rt.due(now_us):
                    ids, received, missing = await rt.counts(conn)
                    events += rt.judge(ids, received, missing, now_us)
            events += self.engine.tick(now_us)
            if events:
                await store.write_events(conn, events)
        if events:
            self._published(events)

    async def _checkpoints(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep(stop, asyncio.Event(), self.cfg.checkpoint_s)
            try:
                await self.checkpoint()
            except psycopg.Error as exc:
                log.warning("alerts: checkpoint not saved (%s); will retry", exc)

    async def checkpoint(self) -> bool:
        """Save the engine's state if no evaluated batch is waiting for its commit."""
        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            async with conn.transaction():
                await store.lock(conn)
                if self._uncommitted:
                    return False
                snap = self.engine.snapshot()
                defs = {name: rt.rule.definition for name, rt in self.engine.runtimes.items()}
            blobs = {k: (defs.get(k, "~"), v) for k, v in snap.items()}
            await store.save_snapshot(conn, blobs)
        return True


async def _sleep(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0
