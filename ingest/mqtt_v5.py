"""MQTT 5 source: an asyncio client on the ``mqtt5`` packet codec, PUBACK after commit.

Why not paho for MQTT 5: paho's receive path spends two thirds of its time in per-message
Python objects and locks, and tops out far below what a process must ingest; ``mqtt5`` (a
sans-I/O MQTT 5 codec in Rust) parses PUBLISH packets in bulk from one buffer, and this
module does the I/O and the session on one asyncio connection (the listener's rate alone
and end to end: ``bench/results/``). MQTT 3.1.1 brokers (the embedded amqtt fallback) still
go through paho (:mod:`ingest.mqtt`).

Behaviour, as the paho listener's: a persistent session (Session Expiry, Receive Maximum),
subscriptions (``$share/<group>/…`` for shared ones), QoS 1 PUBACKs sent only through
``release(ok=True)`` — in one write per batch — and only on the connection the frames came
on (a redelivery after a reconnect is stored once by the idempotent writer); backpressure
pauses the socket; reconnects with backoff; keep-alive pings; downlink replies at QoS 1.

Contract: ``run`` returns only after ``stop``; after ``stop_reading`` no frame is submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

import mqtt5

from core.frames import Outcome
from core.metrics import Metrics
from core.mqtt import MqttConfig, QoS
from ingest.mqtt_source import MqttSource, puback_packets
from ingest.pipeline import Pipeline
from ingest.topics import Refusal, UplinkTopic, downlink, parse_uplink, refused

log = logging.getLogger(__name__)
TRANSPORT = "mqtt"
# mqtt5 leaves Receive Maximum out at 65,535 (the MQTT 5 default), and then Mosquitto 2.0
# falls back to its max_inflight_messages (20): the most we can ask for is 65,534
MAX_RECEIVE_MAXIMUM = 65_534
_TOPIC_CACHE = 200_000  # parsed uplink topics remembered (a topic per device and format)


def receive_maximum(configured: int) -> int:
    """The Receive Maximum the listener asks the broker for (MAX_RECEIVE_MAXIMUM at most)."""
    return min(configured, MAX_RECEIVE_MAXIMUM)


class Mqtt5Listener(MqttSource, asyncio.Protocol):
    """Subscribes to uplink topics and feeds the pipeline; an ``AckSink`` for its frames."""

    def __init__(
        self, cfg: MqttConfig, pipeline: Pipeline, metrics: Metrics, retire: bool = False
    ) -> None:
        super().__init__()
        self._cfg = cfg
        # retire (ingest/workers.py): resume the session, UNSUBSCRIBE instead of SUBSCRIBE,
        # take what it holds; ``end_session`` then makes ``stop`` delete it on the broker
        self._retire = retire
        self.unsubscribed = asyncio.Event()
        self.end_session = False
        self._pipeline = pipeline
        self._metrics = metrics
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._lost: asyncio.Event = asyncio.Event()
        self._topics: dict[str, UplinkTopic] = {}
        self._refusals: dict[str, Refusal] = {}
        self._next_id = 0
        self.pubacks_sent = 0  # PUBACKs written (the bench's count of acknowledged frames)
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._resumed = 0.0
        self._qos1 = cfg.qos is QoS.AT_LEAST_ONCE
        pipeline.add_source(self)

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._acks.new_connection()
        self._buf.clear()
        self._last_rx = self._last_tx = self._resumed = time.monotonic()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        cfg = self._cfg
        transport.write(
            mqtt5.ConnectPacket(
                cfg.client_id,
                username=cfg.username,
                password=cfg.password.get_secret_value().encode() if cfg.password else None,
                clean_start=cfg.session_expiry_s == 0,
                keep_alive=cfg.keepalive_s,
                session_expiry_interval=cfg.session_expiry_s,
                receive_max=receive_maximum(cfg.receive_maximum),
            ).write()
        )
        if self._paused:
            transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._connected.clear()
        self._metrics.mqtt_connected.set(0)
        self._lost.set()
        if not self._stopping.is_set():
            log.warning(
                "MQTT connection lost (%s); unacknowledged frames will be redelivered",
                exc or "closed by the broker",
            )

    def data_received(self, data: bytes) -> None:
        self._last_rx = time.monotonic()
        buf = self._buf
        buf += data
        view = memoryview(buf)
        pos = 0
        submit = self._pipeline.submit
        largest = self._pipeline.max_frame_bytes
        topics, refusals = self._topics, self._refusals
        arrivals = self._acks.packet_ids
        arrival = self._acks.base + len(arrivals)
        tag = self._acks.tag
        # the hot path: a few tens of ns per frame beyond parsing and submit (a packet no
        # longer than max_frame_bytes has a payload no longer either; refused topics are
        # cached apart, so a valid one costs one dict look-up)
        try:
            while True:
                try:
                    pkt, used = mqtt5.read(view[pos:])
                except IndexError:  # the rest of a packet is still on its way
                    break
                pos += used
                if type(pkt) is mqtt5.PublishPacket:
                    topic = pkt.topic
                    levels = topics.get(topic)
                    if levels is None and topic not in refusals:
                        if len(topics) + len(refusals) > _TOPIC_CACHE:
                            topics.clear()
                            refusals.clear()
                        parsed = parse_uplink(topic)
                        if isinstance(parsed, UplinkTopic):
                            levels = topics[topic] = parsed
                        else:
                            refusals[topic] = parsed
                    pid = pkt.packet_id
                    if pid is None:
                        ack, dup = -1, False
                    else:  # AckHandles.handle, inlined
                        ack, dup = tag | arrival, pkt.duplicate
                        arrival += 1
                        arrivals.append(pid)
                    payload = pkt.payload
                    if levels is not None and (used <= largest or len(payload) <= largest):
                        kind, device, fmt, _ = levels
                        submit(fmt, TRANSPORT, self, payload, topic, device, kind, ack, dup)
                    else:
                        reason, fmt, device = refused(
                            levels or refusals[topic], len(payload), largest
                        )
                        self._pipeline.refuse(
                            reason, fmt, TRANSPORT, self, payload[:largest], topic, device, ack
                        )
                else:
                    self._control(pkt)
        except ValueError as exc:  # a malformed packet: the connection cannot be trusted
            log.error("MQTT: malformed packet from the broker (%s); reconnecting", exc)
            if self._transport is not None:
                self._transport.close()
        finally:
            view.release()
            del buf[:pos]

    def _control(self, pkt: Any) -> None:
        cfg = self._cfg
        if type(pkt) is mqtt5.ConnAckPacket:
            if pkt.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
                log.error(
                    "MQTT broker %s:%d refused the connection: %s; retrying",
                    cfg.host,
                    cfg.port,
                    pkt.reason_code.name,
                )
                if self._transport is not None:
                    self._transport.close()
                return
            subs = [f"$share/{cfg.shared_group}/{t}" if cfg.shared_group else t for t in cfg.topics]
            if self._retire:
                self._write(mqtt5.UnsubscribePacket(self._packet_id(), subs).write())
                log.info(
                    "MQTT connected to %s:%d as %s to retire its session (present: %s): "
                    "unsubscribed from %s, taking what it holds",
                    cfg.host,
                    cfg.port,
                    cfg.client_id,
                    pkt.session_present,
                    ", ".join(subs),
                )
                return
            qos = mqtt5.QoS.AT_LEAST_ONCE if self._qos1 else mqtt5.QoS.AT_MOST_ONCE
            self._write(
                mqtt5.SubscribePacket(
                    self._packet_id(), [mqtt5.TopicFilter(t, max_qos=qos) for t in subs]
                ).write()
            )
            log.info(
                "MQTT connected to %s:%d (session present: %s), subscribed to %s",
                cfg.host,
                cfg.port,
                pkt.session_present,
                ", ".join(subs),
            )
        elif type(pkt) is mqtt5.SubAckPacket:
            refused = [c.name for c in pkt.reason_codes if int(c.value) >= 0x80]
            if refused:
                log.error("MQTT broker refused the subscription: %s", ", ".join(refused))
            self._metrics.mqtt_connected.set(1)
            self._connected.set()
        elif type(pkt) is mqtt5.UnsubAckPacket:
            self._metrics.mqtt_connected.set(1)
            self._connected.set()
            self.unsubscribed.set()
        elif type(pkt) is mqtt5.DisconnectPacket:
            log.warning("MQTT broker disconnects us: %s", pkt.reason_code.name)

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        return self._next_id

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
            self._last_tx = time.monotonic()

    # -- AckSink and backpressure ----------------------------------------------------------
    def release(self, ack_ids: Sequence[int], ok: bool, outcome: Outcome | None = None) -> None:
        """PUBACK the frames of a committed batch that came on this connection, in arrival
        order (held until every frame received before them is committed; one write); an
        abandoned batch's frames are never acknowledged."""
        pids = self._acks.release(ack_ids, ok)
        if pids:
            self._write(puback_packets(pids))
            self.pubacks_sent += len(pids)
        if not ok and not self._stopping.is_set() and self._transport is not None:
            # the broker redelivers unacknowledged frames only to a new connection, and each
            # holds one of its in-flight slots meanwhile: reconnect (the session is kept)
            log.warning("MQTT: frames abandoned unstored; reconnecting so the broker resends")
            self._transport.close()

    def send_replies(self, replies: Sequence[tuple[str, bytes]]) -> None:
        """Publish each reply on the device's downlink topic at QoS 1."""
        for topic, payload in replies:
            self._write(
                mqtt5.PublishPacket(
                    downlink(topic), payload, qos=mqtt5.QoS.AT_LEAST_ONCE,
                    packet_id=self._packet_id(),
                ).write()
            )  # fmt: skip

    def pause(self) -> None:
        """Stop reading the socket; the broker keeps the rest of the stream."""
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume(self) -> None:
        """Read the socket again."""
        self._paused = False
        self._resumed = time.monotonic()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect and keep the connection (reconnecting with backoff) until ``stop``."""
        loop = asyncio.get_running_loop()
        cfg, delay = self._cfg, 0.2
        while not self._stopping.is_set():
            self._lost.clear()
            try:
                tls = cfg.ssl_context()
                await asyncio.wait_for(
                    loop.create_connection(
                        lambda: self,
                        cfg.host,
                        cfg.port,
                        ssl=tls,
                        server_hostname=cfg.server_name if tls else None,
                    ),
                    10,
                )
                delay = 0.2
            except (OSError, TimeoutError) as exc:
                log.warning(
                    "MQTT broker %s:%d unreachable (%s); retrying in %.1f s",
                    cfg.host,
                    cfg.port,
                    exc,
                    delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, cfg.reconnect_max_s)
                continue
            await self._keep_alive()
            if not self._stopping.is_set():
                await self._sleep(delay)
                delay = min(delay * 2, cfg.reconnect_max_s)

    async def _keep_alive(self) -> None:
        """Ping when we have sent nothing for half the keep-alive (paused for backpressure
        too: the broker drops a client silent for 1.5 × keep-alive); a broker silent that
        long while we read is taken for dead and the connection closed. While paused we read
        nothing, PINGRESPs included, so silence then says nothing about the broker."""
        interval = max(self._cfg.keepalive_s / 2, 1.0)
        tick = min(interval / 2, 5.0)
        while not self._lost.is_set() and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), tick)
            if self._lost.is_set() or self._stopping.is_set():
                return
            now = time.monotonic()
            silent = now - max(self._last_rx, self._resumed)
            if not self._paused and silent > 1.5 * self._cfg.keepalive_s:
                log.warning("MQTT broker silent for %.0f s; reconnecting", silent)
                if self._transport is not None:
                    self._transport.close()
            elif now - self._last_tx >= interval or (not self._paused and silent >= interval):
                self._write(mqtt5.PingReqPacket().write())

    async def stop(self) -> None:
        """Disconnect (keeping the session) and end ``run``; queued PUBACKs go first."""
        self.stop_reading()
        self._stopping.set()
        transport = self._transport
        if transport is not None:
            # a retired session, emptied: Session Expiry 0 deletes it [MQTT-3.14.2.2.2]
            expiry = 0 if self.end_session else None
            transport.write(mqtt5.DisconnectPacket(session_expiry_interval=expiry).write())
            for _ in range(100):  # let the PUBACKs and the DISCONNECT reach the socket
                if transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.01)
            transport.close()
        self._metrics.mqtt_connected.set(0)
