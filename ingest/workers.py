"""Scale-out: a supervisor process running ``workers`` service processes
(docs/design/0006-scale-out.md).

Each worker is a whole service — its own listeners, pipeline, database connections, device
index and registry change feed — in a fresh interpreter (``spawn``: nothing of the
supervisor's state is inherited). What they share, and how:

- MQTT: worker i connects as ``<mqtt.client_id>-w<i>`` into the MQTT 5 shared subscription
  ``$share/<mqtt.shared_group>/…`` (group ``cityflux`` unless configured); the broker splits
  the stream between them. The client id is the worker's index, so a restarted worker resumes
  its own persistent session and the broker resends the frames it held unacknowledged (the
  idempotent writer stores a frame committed before the crash once).
- CoAP: every worker binds the one UDP port with SO_REUSEPORT; the kernel hashes each
  remote address and port to one socket, so a device's exchanges (Block1 uploads,
  retransmissions) stay in one worker while the set of workers does not change.
- HTTP: worker i listens on ``http.port + i`` (any free port each with ``http.port = 0``):
  every worker serves /metrics, /healthz and /readyz; worker 0 also the operator API.
- Worker 0 alone counts the devices by state (a query over the whole registry).

The supervisor restarts a worker that dies (at once; with a growing delay when it keeps dying
soon after its start), forwards SIGTERM and SIGINT (drain) and SIGHUP to every worker, and
returns when all have stopped: 0 when each drained cleanly. A worker whose supervisor is gone
drains and stops by itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType

from ingest.settings import CoapMode, Settings

log = logging.getLogger(__name__)
DEFAULT_GROUP = "cityflux"
RESTART_MIN_S = 0.5  # delay before the second restart of a worker that keeps dying
RESTART_MAX_S = 30.0
STABLE_S = 10.0  # a worker that ran this long before dying is restarted at once
_POLL_S = 0.2


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings of worker ``index``: its own MQTT client id in the shared group, its own
    HTTP port, the device-state gauges on worker 0 only. One worker: ``settings`` as given."""
    s = settings
    if s.workers == 1:
        return s
    mqtt = s.mqtt.model_copy(
        update={
            "client_id": f"{s.mqtt.client_id}-w{index}",
            "shared_group": s.mqtt.shared_group or DEFAULT_GROUP,
        }
    )
    http = s.http.model_copy(update={"port": s.http.port + index if s.http.port else 0})
    registry = s.registry
    if index > 0:
        registry = registry.model_copy(update={"status_interval_s": 0.0})
    return s.model_copy(update={"mqtt": mqtt, "http": http, "registry": registry})


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _run_worker(settings: Settings, index: int, supervisor_pid: int) -> None:
    """A worker process: the service, until SIGTERM or its supervisor's end."""
    import asyncio

    from core.logformat import configure_logging
    from ingest.service import serve

    configure_logging(settings.log_level.value, settings.log_format, worker=index)
    asyncio.run(serve(worker_settings(settings, index), worker=index, supervisor=supervisor_pid))


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    started: float
    delay_s: float = 0.0  # before the next restart, if this one dies soon


class Supervisor:
    """Runs ``settings.workers`` workers until SIGTERM/SIGINT (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        if settings.coap.mode is not CoapMode.OFF and settings.coap.port == 0:
            # one port for all the workers' SO_REUSEPORT sockets: chosen here, once
            port = _free_udp_port(settings.coap.host)
            settings = settings.model_copy(
                update={"coap": settings.coap.model_copy(update={"port": port})}
            )
        self.settings = settings
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._due: dict[int, tuple[float, float]] = {}  # index -> (restart time, delay_s)
        self._stopping = False
        self._termed: set[int] = set()  # pids sent SIGTERM
        self._failed = False

    def _start(self, index: int, delay_s: float = 0.0) -> None:
        proc = self._ctx.Process(
            target=_run_worker,
            args=(self.settings, index, os.getpid()),
            name=f"cityflux-worker-{index}",
        )
        proc.start()
        self._workers[index] = _Worker(index, proc, time.monotonic(), delay_s)
        log.info("worker %d started (pid %d)", index, proc.pid)

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._forward(signal.SIGHUP)
            return
        if not self._stopping:
            log.info("supervisor: %s; draining the workers", signal.Signals(signum).name)
        self._stopping = True
        self._drain()

    def _forward(self, sig: signal.Signals) -> None:
        for w in list(self._workers.values()):
            if w.process.pid is not None and w.process.is_alive():
                os.kill(w.process.pid, sig)

    def _drain(self) -> None:
        """SIGTERM, once, to every running worker (also one started as the signal came)."""
        for w in list(self._workers.values()):
            pid = w.process.pid
            if pid is not None and pid not in self._termed and w.process.is_alive():
                self._termed.add(pid)
                os.kill(pid, signal.SIGTERM)

    def _reap(self, now: float) -> None:
        for index, w in list(self._workers.items()):
            if w.process.is_alive():
                continue
            w.process.join()
            del self._workers[index]
            code = w.process.exitcode
            if self._stopping:
                if code != 0:
                    self._failed = True
                    log.error("worker %d stopped with exit code %s", index, code)
                continue
            how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit {code}"
            ran = now - w.started
            delay = 0.0 if ran >= STABLE_S else max(RESTART_MIN_S, w.delay_s * 2)
            delay = min(delay, RESTART_MAX_S)
            log.error(
                "worker %d (pid %d) died (%s) after %.1f s; restarting it%s: its unacknowledged "
                "frames come back from its broker session",
                index,
                w.process.pid,
                how,
                ran,
                f" in {delay:.1f} s" if delay else "",
            )
            self._due[index] = (now + delay, delay)

    def run(self) -> int:
        """Start the workers, keep them running, drain them on SIGTERM/SIGINT; the exit code."""
        previous = {
            sig: signal.signal(sig, self._signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            s = self.settings
            log.info(
                "supervisor (pid %d): %d workers in MQTT shared group %s%s",
                os.getpid(),
                s.workers,
                s.mqtt.shared_group or DEFAULT_GROUP,
                f", CoAP udp port {s.coap.port}" if s.coap.mode is not CoapMode.OFF else "",
            )
            for index in range(s.workers):
                self._start(index)
            while self._workers or self._due:
                sentinels = [w.process.sentinel for w in self._workers.values()]
                if sentinels:
                    multiprocessing.connection.wait(sentinels, _POLL_S)
                else:
                    time.sleep(_POLL_S)
                now = time.monotonic()
                self._reap(now)
                if self._stopping:
                    self._due.clear()
                    self._drain()
                for index, (due, delay) in list(self._due.items()):
                    if now >= due:
                        del self._due[index]
                        self.restarts += 1
                        self._start(index, delay)
            return 1 if self._failed else 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
