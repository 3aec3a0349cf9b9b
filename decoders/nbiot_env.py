"""cityflux NB-IoT environmental frame v1 (32 bytes, big-endian) into env_readings.

A fixed layout, so the whole batch decodes with one ``np.frombuffer`` over a structured dtype;
byte table in decoders/README.md. Invalid-value markers (0x7FFF signed, 0xFFFF unsigned,
0x7F for RSSI) produce no reading rather than a fake number.
"""

from __future__ import annotations

import struct

import numpy as np

from core.frames import Decoded, FrameBatch, TableRows
from decoders.base import Decoder, TableSpec
from decoders.compact import HEADER, seal, sequence, validate
from decoders.tables import ENV_READINGS

MAGIC = 0xCE
VERSION = 1

# Field by field, offsets in bytes; all multi-byte fields big-endian (network order).
FRAME = np.dtype(
    [
        *HEADER,  # 0-15 magic 0xCE, version 1, IMEI, time, seq (decoders/compact.py)
        ("temperature", ">i2"),  # 16  0.01 °C, 0x7FFF = invalid
        ("humidity", ">u2"),  # 18  0.01 %RH, 0xFFFF = invalid
        ("pm2_5", ">u2"),  # 20  0.1 µg/m³, 0xFFFF = invalid
        ("pm10", ">u2"),  # 22  0.1 µg/m³, 0xFFFF = invalid
        ("noise", ">u2"),  # 24  0.1 dB(A), 0xFFFF = invalid
        ("battery", ">u2"),  # 26  mV, 0xFFFF = invalid
        ("rssi", "i1"),  # 28  dBm, 0x7F = invalid
        ("status", "u1"),  # 29  bit0 T/RH, bit1 PM, bit2 noise sensor fault; bit3 low battery
        ("crc", ">u2"),  # 30  CRC-16/CCITT-FALSE over bytes 0..29
    ]
)
assert FRAME.itemsize == 32

# (metric name, field, scale, invalid marker)
METRICS: tuple[tuple[bytes, str, float, int], ...] = (
    (b"temperature", "temperature", 0.01, 0x7FFF),
    (b"humidity", "humidity", 0.01, 0xFFFF),
    (b"pm2_5", "pm2_5", 0.1, 0xFFFF),
    (b"pm10", "pm10", 0.1, 0xFFFF),
    (b"noise", "noise", 0.1, 0xFFFF),
    (b"battery", "battery", 1.0, 0xFFFF),
    (b"rssi", "rssi", 1.0, 0x7F),
    (b"status", "status", 1.0, -1),
)


_PACK = struct.Struct(">BBQIHhHHHHHbB")  # FRAME without the CRC, field for field
assert _PACK.size == 30


def encode_frame(
    imei: int,
    time_s: int,
    seq: int,
    *,
    temperature: float,
    humidity: float,
    pm2_5: float,
    pm10: float,
    noise: float,
    battery: int,
    rssi: int,
    status: int = 0,
) -> bytes:
    """Build one frame (used by the simulator and tests)."""
    body = _PACK.pack(
        MAGIC,
        VERSION,
        imei,
        time_s,
        seq,
        round(temperature * 100),
        round(humidity * 100),
        round(pm2_5 * 10),
        round(pm10 * 10),
        round(noise * 10),
        battery,
        rssi,
        status,
    )
    return seal(body)


class NbiotEnvDecoder:
    """Decoder for the 32-byte NB-IoT environmental frame."""

    name = "nbiot-env"
    # application/octet-stream; which binary decoder applies comes from the device's profile
    content_formats: tuple[int, ...] = (42,)
    tables: tuple[TableSpec, ...] = (ENV_READINGS,)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Validate length, magic, version, CRC and device; emit one row per valid metric."""
        checked = validate(batch, FRAME, MAGIC, VERSION)
        rec, devices, frames = checked.records, checked.devices, checked.frames
        m = len(METRICS)
        values = np.empty((rec.shape[0], m), dtype=np.float64)
        valid = np.ones((rec.shape[0], m), dtype=np.bool_)
        for k, (_, field, scale, invalid) in enumerate(METRICS):
            col = rec[field]
            values[:, k] = col * scale
            if invalid >= 0:
                valid[:, k] = col.astype(np.int64) != invalid
        flat = valid.ravel()
        names = np.array([name for name, *_ in METRICS], dtype="S16")
        rows = TableRows(
            table=ENV_READINGS.name,
            columns={
                "time": np.repeat(rec["time"].astype(np.int64) * 1_000_000, m)[flat],
                "metric": np.tile(names, rec.shape[0])[flat],
                "value": values.ravel()[flat],
            },
            devices=np.repeat(devices, m)[flat],
            frame_index=np.repeat(frames, m)[flat],
        )
        return Decoded(
            rows={ENV_READINGS.name: rows},
            rejects=checked.rejects,
            frames_ok=len(frames),
            numbers=[sequence(checked)],
        )


DECODER: Decoder = NbiotEnvDecoder()
