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
drains and stops by itself. Sessions that an earlier run with more workers left (indices
from N up) are retired: the broker would keep dealing them frames while nobody reads them.
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

import mqtt5

from core.mqtt import MqttConfig, MqttProtocol
from ingest.settings import CoapMode, Settings

log = logging.getLogger(__name__)
DEFAULT_GROUP = "cityflux"
RESTART_MIN_S = 0.5  # delay before the second restart of a worker that keeps dying
RESTART_MAX_S = 30.0
STABLE_S = 10.0  # a worker that ran this long before dying is restarted at once
_POLL_S = 0.2


def worker_settings(settings: Settings, index: int, retire: bool = False) -> Settings:
    """The settings of worker ``index``: its own MQTT client id in the shared group, its own
    HTTP port, the device-state gauges on worker 0 only; a retiring worker runs no rules."""
    s = settings
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
    update: dict[str, object] = {"mqtt": mqtt, "http": http, "registry": registry}
    if retire:
        update["alerts"] = s.alerts.model_copy(update={"rules_file": None})
    return s.model_copy(update=update)


def session_exists(cfg: MqttConfig, client_id: str) -> bool:
    """Whether the broker holds a persistent session for ``client_id``: one CONNECT with
    Clean Start 0. A session found is left as it was (anything the broker sends meanwhile
    stays unacknowledged and is sent again); one the probe created is deleted."""
    tls = cfg.ssl_context()
    with socket.create_connection((cfg.host, cfg.port), timeout=10) as raw:
        sock = tls.wrap_socket(raw, server_hostname=cfg.server_name) if tls else raw
        sock.sendall(
            mqtt5.ConnectPacket(
                client_id,
                username=cfg.username,
                password=cfg.password.get_secret_value().encode() if cfg.password else None,
                clean_start=False,
                keep_alive=cfg.keepalive_s,
                session_expiry_interval=cfg.session_expiry_s,
            ).write()
        )
        buf = b""
        while True:
            chunk = sock.recv(65_536)
            if not chunk:
                raise ConnectionError("the broker closed the connection before CONNACK")
            buf += chunk
            try:
                pkt, _ = mqtt5.read(memoryview(buf))
            except IndexError:
                continue
            break
        if type(pkt) is not mqtt5.ConnAckPacket:
            raise ConnectionError(f"expected CONNACK, got {type(pkt).__name__}")
        if pkt.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            raise ConnectionError(f"the broker refused {client_id}: {pkt.reason_code.name}")
        present = bool(pkt.session_present)
        sock.sendall(mqtt5.DisconnectPacket(session_expiry_interval=None if present else 0).write())
        return present


def earlier_workers(settings: Settings) -> bool:
    """Whether worker 0 of an earlier ``--workers N`` run left its session on the broker (a
    single service then runs as one supervised worker, and retires the others')."""
    s = settings.mqtt
    if s.protocol is not MqttProtocol.V5 or s.session_expiry_s == 0:
        return False
    try:
        return session_exists(s, f"{s.client_id}-w0")
    except (OSError, ConnectionError, ValueError) as exc:
        log.warning("could not ask the broker for earlier workers' sessions (%s); going on", exc)
        return False


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _run_worker(settings: Settings, index: int, supervisor_pid: int, retire: bool) -> None:
    """A worker process: the service, until SIGTERM or its supervisor's end (a retiring
    one: until its session is empty)."""
    import asyncio

    from core.logformat import configure_logging
    from ingest.service import serve

    configure_logging(settings.log_level.value, settings.log_format, worker=index)
    mine = worker_settings(settings, index, retire)
    asyncio.run(serve(mine, worker=index, supervisor=supervisor_pid, retire=retire))


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    started: float
    delay_s: float = 0.0  # before the next restart, if this one dies soon
    retire: bool = False  # taking what an earlier run's worker left in its session


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
        self._due: dict[int, tuple[float, float, bool]] = {}  # index -> (when, delay_s, retire)
        self._retire_next: int | None = settings.workers  # next index to look for a session
        self._probe_at = 0.0
        self._stopping = False
        self._termed: set[int] = set()  # pids sent SIGTERM
        self._failed = False

    def _start(self, index: int, delay_s: float = 0.0, retire: bool = False) -> None:
        proc = self._ctx.Process(
            target=_run_worker,
            args=(self.settings, index, os.getpid(), retire),
            name=f"cityflux-worker-{index}",
        )
        proc.start()
        self._workers[index] = _Worker(index, proc, time.monotonic(), delay_s, retire)
        log.info("worker %d started (pid %d)%s", index, proc.pid, " to retire" if retire else "")

    def _retire_earlier(self, now: float) -> None:
        """Hand over the sessions an earlier run with more workers left (indices from
        ``workers`` up, one at a time, until one has none): the broker keeps dealing frames
        to an offline member's persistent session, so they would wait there until it expires."""
        index = self._retire_next
        if index is None or now < self._probe_at or any(w.retire for w in self._workers.values()):
            return
        if any(r for _, _, r in self._due.values()):
            return
        cfg = self.settings.mqtt
        if cfg.session_expiry_s == 0 or index >= 64:
            self._retire_next = None
            return
        cid = f"{cfg.client_id}-w{index}"
        try:
            found = session_exists(cfg, cid)
        except (OSError, ConnectionError, ValueError) as exc:
            log.warning(
                "could not ask the broker for session %s (%s); asking again in 10 s", cid, exc
            )
            self._probe_at = now + 10.0
            return
        if not found:
            self._retire_next = None
            return
        log.warning(
            "session %s of an earlier run with more workers is on the broker, still dealt "
            "frames: retiring it",
            cid,
        )
        self._start(index, retire=True)

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
            if w.retire and code == 0 and not self._stopping:
                log.info("worker %d: earlier session retired, its frames taken", index)
                self._retire_next = index + 1
                continue
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
            self._due[index] = (now + delay, delay, w.retire)

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
                for index, (due, delay, retire) in list(self._due.items()):
                    if now >= due:
                        del self._due[index]
                        self.restarts += 1
                        self._start(index, delay, retire)
                if not self._stopping:
                    self._retire_earlier(now)
            return 1 if self._failed else 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
