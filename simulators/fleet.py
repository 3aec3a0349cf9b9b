"""A small mixed fleet (NB-IoT binary and SenML JSON environmental sensors) over MQTT.

Deterministic for a seed: each device's n-th frame has device time ``base + n × interval``, so
every valid frame has a distinct natural key and the database can be counted against what
was sent. Every ``malformed_every``-th frame is corrupted on purpose (an expected reject).
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from decoders.nbiot_env import encode_frame
from ingest.topics import uplink


@dataclass
class FleetReport:
    """What the fleet did: counts by outcome, for the loss accounting."""

    run_id: int
    devices: list[str] = field(default_factory=list)
    sent: int = 0
    acked: int = 0
    malformed_sent: int = 0
    malformed_acked: int = 0
    duration_s: float = 0.0

    @property
    def valid_acked(self) -> int:
        """Well-formed frames the broker acknowledged: each of them must end up stored."""
        return self.acked - self.malformed_acked


@dataclass
class DemoFleet:
    """``binary_devices`` NB-IoT frames and ``senml_devices`` SenML packs, round robin."""

    host: str
    port: int
    v5: bool = True
    binary_devices: int = 100
    senml_devices: int = 100
    rate_per_s: float = 5_000.0
    malformed_every: int = 1000
    qos: int = 1
    seed: int = 1
    interval_s: int = 60

    def __post_init__(self) -> None:
        rnd = random.Random(self.seed)
        self.run_id = rnd.randrange(100_000, 999_999)
        self.base_time = 1_767_225_600  # 2026-01-01T00:00:00Z: fixed, so runs are repeatable
        self._rnd = rnd

    def device_ids(self) -> list[tuple[str, str]]:
        """(kind, device id, format) of every simulated device."""
        return [("env", f"86{self.run_id:06d}{i:07d}") for i in range(self.binary_devices)] + [
            ("env", f"demo-{self.run_id}-{i:05d}") for i in range(self.senml_devices)
        ]

    def frame(self, index: int, seq: int) -> tuple[str, bytes, bool]:
        """Topic, payload and whether it is malformed, for device ``index``'s frame ``seq``."""
        t = self.base_time + seq * self.interval_s
        phase = (seq % 1440) / 1440
        temp = 18 + 8 * phase + self._rnd.random()
        bad = self.malformed_every > 0 and self._rnd.randrange(self.malformed_every) == 0
        if index < self.binary_devices:
            dev = f"86{self.run_id:06d}{index:07d}"
            payload = encode_frame(
                int(dev),
                t,
                seq & 0xFFFF,
                temperature=temp,
                humidity=55.0,
                pm2_5=12.3 + index % 40,
                pm10=30.1,
                noise=48.2,
                battery=3600,
                rssi=-85,
            )
            if bad:
                payload = payload[:20]
            return uplink("env", dev, "nbiot-env"), payload, bad
        dev = f"demo-{self.run_id}-{index - self.binary_devices:05d}"
        pack = [
            {"bt": t, "n": "temperature", "u": "Cel", "v": round(temp, 2)},
            {"n": "humidity", "u": "%RH", "v": 55.5},
            {"n": "pm2_5", "u": "ug/m3", "v": 10 + index % 30},
        ]
        raw = json.dumps(pack, separators=(",", ":")).encode()
        if bad:
            raw = raw[: len(raw) // 2]
        return uplink("env", dev, "senml-json"), raw, bad

    def run(self, duration_s: float, stop: threading.Event | None = None) -> FleetReport:
        """Publish for ``duration_s`` seconds (or until ``stop``); wait for the broker's acks."""
        report = FleetReport(self.run_id, [d for _, d in self.device_ids()])
        lock = threading.Lock()

        def on_publish(
            client: paho.Client, userdata: object, mid: int, reason: object, properties: object
        ) -> None:
            with lock:
                report.acked += 1

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"cityflux-fleet-{self.run_id}",
            protocol=MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311,
        )
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_publish = on_publish
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        n_dev = self.binary_devices + self.senml_devices
        start = time.monotonic()
        sent = 0
        malformed: list[paho.MQTTMessageInfo] = []  # ~1 in 1,000: kept to count their acks
        try:
            while time.monotonic() - start < duration_s and not (stop and stop.is_set()):
                # send in small bursts and sleep to hold the rate cap
                for _ in range(100):
                    idx, seq = sent % n_dev, sent // n_dev
                    topic, payload, bad = self.frame(idx, seq)
                    info = client.publish(topic, payload, qos=self.qos)
                    if bad:
                        malformed.append(info)
                    sent += 1
                ahead = sent / self.rate_per_s - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
                # paho rescans its whole outgoing queue on every PUBACK: keep the queue short
                while self.qos and sent - report.acked > 2000:
                    time.sleep(0.001)
        finally:
            report.sent = sent
            report.malformed_sent = len(malformed)
            deadline = time.monotonic() + 30
            while self.qos and report.acked < sent and time.monotonic() < deadline:
                time.sleep(0.02)
            report.duration_s = time.monotonic() - start
            report.malformed_acked = sum(1 for info in malformed if info.is_published())
            client.disconnect()
            client.loop_stop()
        if not self.qos:
            report.acked = sent
            report.malformed_acked = report.malformed_sent
        return report
