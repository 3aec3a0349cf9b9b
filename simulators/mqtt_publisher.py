"""A bulk MQTT 5 publisher for simulated fleets, replays and bench preloads.

Many simulated devices share one connection (a gateway, as a load generator multiplexes them);
each frame carries a ``tag`` and the publisher counts, per tag, what was sent, what the
broker acknowledged (PUBACK < 0x80, QoS 1) and what it refused (PUBACK ≥ 0x80, e.g. 0x87 not
authorised). Packets are encoded by the ``mqtt5`` codec (Rust) and written in batches on a
blocking socket; at most the broker's Receive Maximum are in flight. paho's publisher is
tens of µs a message and rescans its in-flight queue on every PUBACK; this one is far cheaper, so
it is not the bottleneck of the runs it drives.

Not thread-safe: one thread publishes, polls and closes.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections import Counter

import mqtt5

from core.mqtt import MqttConfig

_FLUSH_BYTES = 256 * 1024


class PublishError(RuntimeError):
    """The broker refused the connection or it was lost (message says which)."""


class BulkPublisher:
    """One MQTT 5 connection that publishes tagged frames and counts their outcomes."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 60,
        max_inflight: int = 65_535,
        tls: MqttConfig | None = None,
    ) -> None:
        self.host, self.port, self.client_id, self.qos = host, port, client_id, qos
        self._tls = tls
        self._username, self._password, self._keepalive = username, password, keepalive_s
        self._max_inflight = max_inflight
        self.sent: Counter[int] = Counter()
        self.acked: Counter[int] = Counter()
        self.refused: Counter[int] = Counter()
        self._inflight: dict[int, int] = {}  # packet id -> tag
        self._next_id = 0
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._buf = bytearray()
        self._sock: socket.socket | None = None
        self._last_tx = 0.0
        self._window = 1

    # -- connection ------------------------------------------------------------------------
    def connect(self, timeout_s: float = 10.0) -> BulkPublisher:
        """Connect and wait for the CONNACK (its Receive Maximum sets the window)."""
        sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        ctx = self._tls.ssl_context() if self._tls else None
        if ctx is not None and self._tls is not None:
            sock = ctx.wrap_socket(sock, server_hostname=self._tls.server_name)
        self._sock = sock
        sock.sendall(
            mqtt5.ConnectPacket(
                self.client_id,
                username=self._username,
                password=self._password.encode() if self._password else None,
                clean_start=True,
                keep_alive=self._keepalive,
            ).write()
        )
        deadline = time.monotonic() + timeout_s
        while True:
            pkt = self._read_one(deadline)
            if type(pkt) is mqtt5.ConnAckPacket:
                if pkt.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
                    sock.close()
                    raise PublishError(
                        f"{self.host}:{self.port} refused {self.client_id}: {pkt.reason_code.name}"
                    )
                self._window = max(1, min(self._max_inflight, pkt.receive_max or 65_535))
                break
        sock.settimeout(None)
        self._last_tx = time.monotonic()
        return self

    def close(self) -> None:
        """Send DISCONNECT and close (frames still in flight are not waited for)."""
        if self._sock is None:
            return
        try:
            self._flush()
            self._sock.sendall(mqtt5.DisconnectPacket().write())
        except OSError:
            pass
        self._sock.close()
        self._sock = None

    # -- publishing ------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, tag: int = 0) -> None:
        """Queue one frame; blocks while the broker's window is full."""
        if self.qos:
            while len(self._inflight) >= self._window:
                self._flush()
                self._read_acks(block=True)
            pid = self._next_id = self._next_id % 0xFFFF + 1
            while pid in self._inflight:  # only after 65,535 unacknowledged frames
                self._read_acks(block=True)
            self._inflight[pid] = tag
            data = mqtt5.PublishPacket(
                topic, payload, qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=pid
            ).write()
        else:
            data = mqtt5.PublishPacket(topic, payload).write()
        self.sent[tag] += 1
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes >= _FLUSH_BYTES:
            self._flush()

    def poll(self) -> None:
        """Write what is queued, read the acknowledgements that came, keep the link alive."""
        self._flush()
        self._read_acks(block=False)
        if time.monotonic() - self._last_tx > self._keepalive / 2:
            self._send(mqtt5.PingReqPacket().write())

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Wait until every frame is acknowledged (or refused); False on timeout."""
        self._flush()
        deadline = time.monotonic() + timeout_s
        while self._inflight and time.monotonic() < deadline:
            self._read_acks(block=True, timeout_s=min(1.0, deadline - time.monotonic()))
        return not self._inflight

    @property
    def inflight(self) -> int:
        """Frames sent and not yet acknowledged."""
        return len(self._inflight)

    # -- internals -------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise PublishError("not connected")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise PublishError(f"connection to {self.host}:{self.port} lost: {exc}") from exc
        self._last_tx = time.monotonic()

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._out_bytes = 0
            self._send(data)

    def _read_acks(self, block: bool, timeout_s: float = 5.0) -> None:
        sock = self._sock
        if sock is None:
            raise PublishError("not connected")
        # TLS: bytes already decrypted sit in the SSL object, invisible to select
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not pending:
            ready, _, _ = select.select([sock], [], [], timeout_s if block else 0)
            if not ready:
                return
        data = sock.recv(1 << 20)
        if not data:
            raise PublishError(f"{self.host}:{self.port} closed the connection")
        self._buf += data
        self._parse()

    def _parse(self) -> None:
        view = memoryview(self._buf)
        pos = 0
        try:
            while True:
                try:
                    pkt, used = mqtt5.read(view[pos:])
                except IndexError:
                    break
                pos += used
                if type(pkt) is mqtt5.PubAckPacket:
                    tag = self._inflight.pop(pkt.packet_id, None)
                    if tag is not None:
                        if int(pkt.reason_code.value) >= 0x80:
                            self.refused[tag] += 1
                        else:
                            self.acked[tag] += 1
                elif type(pkt) is mqtt5.DisconnectPacket:
                    raise PublishError(f"broker disconnected us: {pkt.reason_code.name}")
        finally:
            view.release()
            del self._buf[:pos]

    def _read_one(self, deadline: float) -> object:
        assert self._sock is not None
        while True:
            try:
                pkt, used = mqtt5.read(memoryview(bytes(self._buf)))
            except IndexError:
                self._sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = self._sock.recv(65536)
                if not data:
                    raise PublishError(f"{self.host}:{self.port} closed the connection") from None
                self._buf += data
                continue
            del self._buf[:used]
            return pkt


class PahoPublisher:
    """The same interface over paho-mqtt, for MQTT 3.1.1 brokers (the embedded amqtt
    fallback), which the mqtt5 codec does not speak. Slower (paho rescans its in-flight
    queue on each PUBACK, so at most ``max_inflight`` are kept in flight)."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        max_inflight: int = 500,
        tls: MqttConfig | None = None,
    ) -> None:
        import threading

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.qos, self._max_inflight = qos, max_inflight
        self.sent: Counter[int] = Counter()
        self.acked: Counter[int] = Counter()
        self.refused: Counter[int] = Counter()
        self._tags: dict[int, int] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311
        )
        if username:
            self._client.username_pw_set(username, password)
        if tls is not None:
            tls.secure_paho(self._client)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        self._client.on_publish = self._on_publish
        self._host, self._port = host, port

    def _on_publish(self, client: object, userdata: object, mid: int, *rest: object) -> None:
        # paho calls this holding its own outgoing-message lock: ``publish`` must never hold
        # ``_lock`` while it calls paho (the two locks taken in opposite orders deadlock)
        if not self.qos:
            return
        with self._lock:
            tag = self._tags.pop(mid, None)
            if tag is None:  # acknowledged before ``publish`` noted its mid
                self._early.add(mid)
            else:
                self.acked[tag] += 1

    def connect(self) -> PahoPublisher:
        """Connect and start paho's network thread."""
        self._client.connect(self._host, self._port)
        self._client.loop_start()
        return self

    @property
    def inflight(self) -> int:
        """Frames sent and not yet acknowledged."""
        return len(self._tags)

    def publish(self, topic: str, payload: bytes, tag: int = 0) -> None:
        """Publish one frame; blocks while ``max_inflight`` are unacknowledged."""
        while self.qos and len(self._tags) >= self._max_inflight:
            time.sleep(0.001)
        info = self._client.publish(topic, payload, qos=self.qos)
        if self.qos:
            with self._lock:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    self.acked[tag] += 1
                else:
                    self._tags[info.mid] = tag
        self.sent[tag] += 1

    def poll(self) -> None:
        """paho's thread does the I/O."""

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Wait until every frame is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._tags and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._tags

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()


def connect_publisher(
    host: str,
    port: int,
    client_id: str,
    *,
    qos: int = 1,
    v5: bool = True,
    username: str | None = None,
    password: str | None = None,
    tls: MqttConfig | None = None,
) -> BulkPublisher | PahoPublisher:
    """A connected publisher for the broker's protocol version (``tls``: the broker settings
    whose TLS options to use)."""
    if v5:
        return BulkPublisher(
            host, port, client_id, qos=qos, username=username, password=password, tls=tls
        ).connect()
    return PahoPublisher(
        host, port, client_id, qos=qos, username=username, password=password, tls=tls
    ).connect()
