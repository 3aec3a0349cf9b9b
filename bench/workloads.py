"""The bench's message sets: the same readings for cityflux, the baselines and the peers."""

from __future__ import annotations

from decoders.nbiot_env import encode_frame
from ingest.topics import uplink

PREFIX = "bench"
BASE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z
MULTI_READINGS = 8  # readings in one NB-IoT environmental frame


def _value(i: int) -> str:
    return f"{18 + (i % 997) / 100:.2f}"  # 18.00 … 27.96, as ESPHome prints a 2-decimal sensor


def single_reading(n: int, devices: int = 1000) -> list[tuple[str, bytes]]:
    """``n`` one-reading messages (the ``value`` format: a bare number on a topic naming the
    device and the metric) from ``devices`` devices."""
    return [
        (
            uplink("env", f"esp-{i % devices:05d}", "value", PREFIX, "/temperature"),
            _value(i).encode(),
        )
        for i in range(n)
    ]


def esphome(n: int, devices: int = 1000) -> list[tuple[str, bytes]]:
    """The same readings on ESPHome state topics (``<node>/sensor/<name>/state``), for the
    esphome-mqtt-timescaledb-ingestor peer. The value carries an explicit ``+`` sign: the
    peer drops every payload that parses as JSON (``json.loads("21.50")`` is a float, and its
    ``data['time'] = …`` then raises), i.e. every plain ESPHome number; ``+21.50`` is not JSON
    and reaches its ``float()`` path, so it stores them."""
    return [
        (f"esp-{i % devices:05d}/sensor/temperature/state", b"+" + _value(i).encode())
        for i in range(n)
    ]


def multi_reading(
    n: int, devices: int = 1000, base_imei: int = 862_000_000_000_000
) -> list[tuple[str, bytes]]:
    """``n`` NB-IoT environmental frames of 8 readings each (32-byte binary, own device time)."""
    out = []
    for i in range(n):
        d, seq = i % devices, i // devices
        imei = base_imei + d
        out.append(
            (
                uplink("env", str(imei), "nbiot-env", PREFIX),
                encode_frame(
                    imei,
                    BASE_TIME + seq * 60,
                    seq & 0xFFFF,
                    temperature=18 + (i % 997) / 100,
                    humidity=50,
                    pm2_5=10,
                    pm10=20,
                    noise=40,
                    battery=3600,
                    rssi=-80,
                ),
            )
        )
    return out
