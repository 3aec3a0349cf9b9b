"""Delivering alert events: MQTT and webhooks, each reading the event log like an outbox.

Each sink keeps a cursor (the last event id it delivered) in ``alert_sink_cursors``. It reads
the events after it, delivers them in order and only then moves the cursor, so an event is
delivered at least once, in order, whatever crashes; a sink that cannot deliver (broker
down, webhook answering 500) retries the same events with exponential backoff — nothing is
dropped, and later events wait behind the failed ones. The exception is a permanent refusal
(a webhook answering 4xx other than 408 or 429: the receiver will never take that body): the
sink then sends the first event alone, and after ``give_up_after`` refusals of it records it
in ``alert_delivery_failures`` and moves on, so one poisoned event cannot block its sink for
ever. The pipeline wakes the sinks after each commit that wrote events, so delivery follows
within milliseconds.

Contract: ``deliver`` either delivers every event given or raises; it may be called again
with the same events (receivers should de-duplicate by the event ``id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import httpx
import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from alerts import store
from core.metrics import Metrics
from core.mqtt import MqttConfig

log = logging.getLogger(__name__)


class PermanentDeliveryError(Exception):
    """The receiver refused the events and would refuse them again (HTTP 4xx but 408/429)."""


class Sink(Protocol):
    """Where alert events go."""

    name: str

    async def deliver(self, events: Sequence[dict[str, Any]]) -> None:
        """Deliver every event (in order) or raise."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def event_json(e: dict[str, Any]) -> dict[str, Any]:
    """An event as delivered: the log row with ISO times."""
    return {
        k: v.isoformat() if isinstance(v, datetime) else v for k, v in e.items() if v is not None
    }


def _level(text: str) -> str:
    """A topic level from free text (MQTT wildcards and separators replaced)."""
    return "".join("_" if c in "/+#\x00" else c for c in text) or "_"


class MqttSink:
    """Publishes each event at QoS 1 on ``<prefix>/<severity>/<rule>/<subject>`` and waits for
    the broker's PUBACKs before the cursor moves."""

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        *,
        qos: int = 1,
        v5: bool = True,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        broker: MqttConfig | None = None,
    ) -> None:
        """``broker``, when given, adds its TLS settings (and its credentials)."""
        self.name = "mqtt"
        self.prefix = prefix.rstrip("/")
        self.qos = qos
        self.timeout_s = timeout_s
        self._host, self._port = host, port
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"cityflux-alerts-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        if username:
            self._client.username_pw_set(username, password)
        if broker is not None:
            broker.secure_paho(self._client)
        self._connected = threading.Event()
        self._client.on_connect = lambda *a: self._connected.set()
        self._client.on_disconnect = lambda *a: self._connected.clear()
        self._started = False

    def topic(self, e: dict[str, Any]) -> str:
        """Where an event is published."""
        return "/".join(
            (self.prefix, _level(e["severity"]), _level(e["rule"]), _level(str(e["subject"])))
        )

    def _publish(self, events: Sequence[dict[str, Any]]) -> None:
        if not self._started:
            self._client.connect_async(self._host, self._port, keepalive=30)
            self._client.loop_start()
            self._started = True
        if not self._connected.wait(self.timeout_s):
            raise ConnectionError(f"MQTT broker {self._host}:{self._port} not connected")
        infos = [
            self._client.publish(self.topic(e), json.dumps(event_json(e)), qos=self.qos)
            for e in events
        ]
        for info in infos:
            info.wait_for_publish(self.timeout_s)
            if not info.is_published():
                raise ConnectionError("MQTT broker did not acknowledge an alert event")

    async def deliver(self, events: Sequence[dict[str, Any]]) -> None:
        """Publish and wait for every PUBACK (in a thread: paho's API blocks)."""
        await asyncio.to_thread(self._publish, events)

    async def close(self) -> None:
        """Disconnect."""
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()


SIGNATURE_HEADER = "X-Cityflux-Signature"
TIMESTAMP_HEADER = "X-Cityflux-Timestamp"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>." + body>``: the timestamp is signed with the
    body, so a receiver that refuses old timestamps refuses replays (alerts/README.md)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


class WebhookSink:
    """POSTs ``{"events": [...]}`` to a URL; any 2xx is delivered, a 4xx other than 408 or
    429 is a permanent refusal. With a secret, each request carries
    ``X-Cityflux-Timestamp: <unix seconds>`` and ``X-Cityflux-Signature: sha256=<hex HMAC of
    "<timestamp>." + body>``."""

    def __init__(self, url: str, *, secret: str | None = None, timeout_s: float = 10.0) -> None:
        self.url = url
        self.name = f"webhook:{url}"
        self._secret = secret.encode() if secret else None
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def deliver(self, events: Sequence[dict[str, Any]]) -> None:
        """One POST for the events."""
        body = json.dumps({"events": [event_json(e) for e in events]}).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "cityflux-alerts"}
        if self._secret is not None:
            stamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = stamp
            headers[SIGNATURE_HEADER] = signature(self._secret, stamp, body)
        resp = await self._client.post(self.url, content=body, headers=headers)
        code = resp.status_code
        if 400 <= code < 500 and code not in (408, 429):
            raise PermanentDeliveryError(f"webhook {self.url} answered {code}")
        if not 200 <= code < 300:
            raise ConnectionError(f"webhook {self.url} answered {code}")

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()


class Dispatcher:
    """Runs one sink: read after the cursor, deliver, move the cursor; retry on failure."""

    def __init__(
        self,
        sink: Sink,
        conninfo: str,
        metrics: Metrics,
        *,
        batch: int = 500,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 300.0,
        poll_s: float = 1.0,
        give_up_after: int = 5,
    ) -> None:
        self.sink = sink
        self._conninfo = conninfo
        self._metrics = metrics
        self._batch = batch
        self._retry = (retry_initial_s, retry_max_s)
        self._poll_s = poll_s
        self._give_up_after = give_up_after
        self.wake = asyncio.Event()
        self.delivered = 0
        self.failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``."""
        delay = self._retry[0]
        refused: tuple[int, int] | None = None  # (event id sent alone, refusals so far)
        isolate_until = 0  # events up to this id go one at a time (a batch was refused)
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    cursor = await store.cursor_of(conn, self.sink.name)
                    while not stop.is_set():
                        events = await store.events_after(conn, cursor, self._batch)
                        self._metrics.alert_backlog.labels(self.sink.name).set(
                            await store.newest_event(conn) - cursor
                        )
                        if not events:
                            self.wake.clear()
                            await _wait(self.wake, stop, self._poll_s)
                            continue
                        if cursor < isolate_until:  # a batch was refused: one at a time
                            events = events[:1]
                        try:
                            await self.sink.deliver(events)
                        except PermanentDeliveryError as exc:
                            self._metrics.alert_deliveries.labels(self.sink.name, "failed").inc(
                                len(events)
                            )
                            if len(events) > 1:  # which event? send them alone from now on
                                isolate_until = int(events[-1]["id"])
                                continue
                            first = int(events[0]["id"])
                            n = refused[1] + 1 if refused and refused[0] == first else 1
                            refused = (first, n)
                            if n >= self._give_up_after:
                                await store.give_up(conn, self.sink.name, first, n, str(exc))
                                self._metrics.alert_deliveries.labels(
                                    self.sink.name, "given_up"
                                ).inc()
                                log.error(
                                    "alert sink %s: event %d refused %d times (%s); recorded "
                                    "in alert_delivery_failures, delivering the next events",
                                    self.sink.name,
                                    first,
                                    n,
                                    exc,
                                )
                                cursor, refused, delay = first, None, self._retry[0]
                                continue
                            log.warning(
                                "alert sink %s: event %d refused (%s; %d of %d tries); "
                                "retrying it in %.1f s",
                                self.sink.name,
                                first,
                                exc,
                                n,
                                self._give_up_after,
                                delay,
                            )
                            await _wait(asyncio.Event(), stop, delay)
                            delay = min(delay * 2, self._retry[1])
                            continue
                        except Exception as exc:  # any failure: retry the same events later
                            self.failures += 1
                            self._metrics.alert_deliveries.labels(self.sink.name, "failed").inc(
                                len(events)
                            )
                            log.warning(
                                "alert sink %s: delivering %d events from id %d failed (%s); "
                                "retrying in %.0f s, nothing is dropped",
                                self.sink.name,
                                len(events),
                                events[0]["id"],
                                exc,
                                delay,
                            )
                            await _wait(asyncio.Event(), stop, delay)
                            delay = min(delay * 2, self._retry[1])
                            continue
                        delay = self._retry[0]
                        refused = None
                        cursor = int(events[-1]["id"])
                        await store.advance_cursor(conn, self.sink.name, cursor)
                        self.delivered += len(events)
                        self._metrics.alert_deliveries.labels(self.sink.name, "delivered").inc(
                            len(events)
                        )
            except psycopg.OperationalError as exc:
                log.warning(
                    "alert sink %s: database unavailable (%s); retrying", self.sink.name, exc
                )
                await _wait(asyncio.Event(), stop, min(delay, 5.0))
        await self.sink.close()


async def _wait(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
