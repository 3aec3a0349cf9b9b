"""MQTT source: paho-mqtt 2.x driven by the asyncio loop, acknowledging QoS 1 after commit.

Why paho with our own loop integration rather than aiomqtt: paho's parser is the fastest
pure-Python one (bench/README.md has the figures measured here), and its ``manual_ack`` mode
lets PUBACK wait for the database commit. The socket is watched with ``loop.add_reader``, so
callbacks run on the service's loop thread and no lock is needed between the listener and
the pipeline (paho's examples/loop_asyncio.py shows the same integration).

Contract: ``run`` returns only after ``stop``; after ``stop`` no frame is submitted. A frame is
acknowledged (PUBACK) only through ``release(ok=True)``, i.e. after its batch committed; frames
not acknowledged when the process dies are redelivered by the broker (persistent session).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Any, Literal, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from core.frames import Outcome
from core.metrics import Metrics
from core.mqtt import MqttConfig, MqttProtocol, QoS
from ingest.mqtt_source import MqttSource
from ingest.pipeline import Pipeline
from ingest.topics import Refusal, UplinkTopic, downlink, parse_uplink, refused

log = logging.getLogger(__name__)
TRANSPORT = "mqtt"


class MqttListener(MqttSource):
    """Subscribes to uplink topics and feeds the pipeline; an ``AckSink`` for its frames."""

    def __init__(self, cfg: MqttConfig, pipeline: Pipeline, metrics: Metrics) -> None:
        super().__init__()
        self._cfg = cfg
        self._pipeline = pipeline
        self._metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._reading = False
        self._client = self._make_client()
        pipeline.add_source(self)

    # -- paho wiring ----------------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        cfg = self._cfg
        v5 = cfg.protocol is MqttProtocol.V5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=None if v5 else cfg.session_expiry_s == 0,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=cfg.qos is QoS.AT_LEAST_ONCE,
            reconnect_on_failure=False,
        )
        cfg.secure_paho(client)  # user name, password, TLS
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._attach, sock)

    def _attach(self, sock: socket.socket) -> None:
        self._sock = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        if not self._paused:
            self._start_reading()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        if self._reading:
            self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._reading = False
        self._sock = None

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._watch_writes, sock)

    def _watch_writes(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0 and self._client.want_write():
            assert self._loop is not None
            self._loop.add_writer(sock, self._client.loop_write)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _start_reading(self) -> None:
        if self._sock is not None and not self._reading:
            assert self._loop is not None
            self._loop.add_reader(self._sock, self._read)
            self._reading = True

    def _read(self) -> None:
        # Read everything the socket has: paho parses one packet per loop_read call.
        self._client.loop_read(max_packets=1000)
        # TLS: bytes already decrypted wait in the SSL object and do not wake the selector
        sock = self._sock
        if self._reading and isinstance(sock, ssl.SSLSocket) and sock.pending():
            assert self._loop is not None
            self._loop.call_soon(self._read)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error(
                "MQTT broker %s:%d refused the connection: %s; retrying",
                self._cfg.host,
                self._cfg.port,
                reason,
            )
            return
        self._acks.new_connection()
        cfg = self._cfg
        subs = [(f"$share/{cfg.shared_group}/{t}" if cfg.shared_group else t) for t in cfg.topics]
        if cfg.protocol is MqttProtocol.V5:
            client.subscribe([(t, SubscribeOptions(qos=int(cfg.qos))) for t in subs])
        else:
            client.subscribe([(t, int(cfg.qos)) for t in subs])
        log.info(
            "MQTT connected to %s:%d (session present: %s), subscribed to %s",
            cfg.host,
            cfg.port,
            flags.session_present,
            ", ".join(subs),
        )
        self._metrics.mqtt_connected.set(1)
        self._connected.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._metrics.mqtt_connected.set(0)
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning(
                "MQTT connection lost (%s); unacknowledged frames will be redelivered", reason
            )

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
            levels: UplinkTopic | Refusal = parse_uplink(topic)
        except UnicodeDecodeError:  # MQTT topics are UTF-8 (MQTT-1.5.3-1); a broker let it by
            topic = msg._topic.decode(errors="backslashreplace")
            levels = Refusal("topic_invalid: not UTF-8")
        payload = cast(bytes, msg.payload)  # paho hands payloads as bytes
        ack_id = self._acks.handle(msg.mid if msg.qos == 1 else None)
        largest = self._pipeline.max_frame_bytes
        if isinstance(levels, UplinkTopic) and len(payload) <= largest:
            kind, device, fmt, _ = levels
            self._pipeline.submit(
                fmt, TRANSPORT, self, payload, topic, device, kind, ack_id, bool(msg.dup)
            )
            return
        reason, fmt, device = refused(levels, len(payload), largest)
        self._pipeline.refuse(
            reason, fmt, TRANSPORT, self, payload[:largest], topic, device, ack_id
        )

    # -- AckSink and backpressure -----------------------------------------------------------
    def release(self, ack_ids: Sequence[int], ok: bool, outcome: Outcome | None = None) -> None:
        """PUBACK the frames of a committed batch (dead-lettered ones too: they are stored),
        in arrival order; never those of an abandoned one."""
        ack = self._client.ack
        for mid in self._acks.release(ack_ids, ok):  # in arrival order (ingest/mqtt_source.py)
            ack(mid, 1)
        if not ok and not self._stopping.is_set() and self._client.is_connected():
            log.warning("MQTT: frames abandoned unstored; reconnecting so the broker resends")
            self._client.disconnect()  # the session is kept; run() reconnects

    def send_replies(self, replies: Sequence[tuple[str, bytes]]) -> None:
        """Publish each reply on the device's downlink topic (``…/down/<kind>/<device>/<fmt>``)
        at QoS 1."""
        for topic, payload in replies:
            self._client.publish(downlink(topic), payload, qos=1)

    def pause(self) -> None:
        """Stop reading the socket; the broker keeps the rest of the stream."""
        self._paused = True
        if self._reading and self._sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._sock)
            self._reading = False

    def resume(self) -> None:
        """Read the socket again."""
        self._paused = False
        self._start_reading()

    # -- lifecycle ------------------------------------------------------------------------
    def _connect_properties(self) -> Properties | None:
        if self._cfg.protocol is not MqttProtocol.V5:
            return None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._cfg.session_expiry_s
        props.ReceiveMaximum = self._cfg.receive_maximum
        return props

    async def run(self) -> None:
        """Connect, keep the connection (reconnecting with backoff) until ``stop``."""
        self._loop = asyncio.get_running_loop()
        cfg, delay = self._cfg, 0.2
        # persistent session unless session_expiry_s = 0 (MQTT 5 Clean Start; 3.1.1 uses the
        # clean_session flag given to the client instead, which paho's value 3 defers to)
        v5 = cfg.protocol is MqttProtocol.V5
        clean: bool | Literal[3] = (cfg.session_expiry_s == 0) if v5 else 3
        self._client.connect_async(
            cfg.host,
            cfg.port,
            cfg.keepalive_s,
            clean_start=clean,
            properties=self._connect_properties(),
        )
        while not self._stopping.is_set():
            if not self._client.is_connected() and self._sock is None:
                try:
                    await asyncio.to_thread(self._client.reconnect)
                    delay = 0.2
                except OSError as exc:
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
            self._client.loop_misc()
            await self._sleep(1.0)

    async def stop(self) -> None:
        """Flush pending acknowledgements, disconnect (keeping the session), end ``run``."""
        self.stop_reading()
        self._stopping.set()
        for _ in range(100):  # let queued PUBACKs reach the socket
            if not self._client.want_write():
                break
            self._client.loop_write()
            await asyncio.sleep(0.01)
        self._client.disconnect()
        self._client.loop_write()
        if self._sock is not None:
            self._on_socket_close(self._client, None, self._sock)
        self._metrics.mqtt_connected.set(0)
