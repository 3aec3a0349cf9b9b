"""cityflux parking-space sensor frame v1 (30 bytes, big-endian) into parking_readings.

An NB-IoT geomagnetic sensor glued into the asphalt of one parking space: it senses the
change of the earth's field a car's steel makes, decides occupied or free, and reports on each
change and as a heartbeat. A compact frame (decoders/compact.py: same header, CRC and
validation as ``nbiot-env`` and ``streetlight``); byte table in decoders/README.md. The
invalid markers (0x7FFF, 0xFFFF, 0x7F) and the occupancy byte 0xFF (calibrating) are NULL.
"""

from __future__ import annotations

import struct

import numpy as np

from core.frames import Decoded, FrameBatch, Reject, TableRows
from decoders.base import Decoder, TableSpec
from decoders.compact import HEADER, seal, validate
from decoders.tables import PARKING_LOT_OCCUPANCY, PARKING_READINGS

MAGIC = 0xD0
VERSION = 1

FRAME = np.dtype(
    [
        *HEADER,  # 0-15 magic 0xD0, version 1, IMEI, time, seq (decoders/compact.py)
        ("occupancy", "u1"),  # 16 0 free, 1 occupied, 0xFF calibrating (no decision)
        ("flags", "u1"),  # 17 bit0 heartbeat (not a change), bit1 sensor fault, bit2 low battery
        ("mag_x", ">i2"),  # 18 0.1 µT, 0x7FFF = invalid
        ("mag_y", ">i2"),  # 20 0.1 µT, 0x7FFF = invalid
        ("mag_z", ">i2"),  # 22 0.1 µT, 0x7FFF = invalid
        ("battery", ">u2"),  # 24 mV, 0xFFFF = invalid
        ("temperature", "i1"),  # 26 °C, 0x7F = invalid
        ("reserved", "u1"),  # 27 0
        ("crc", ">u2"),  # 28 CRC-16/CCITT-FALSE over bytes 0..27
    ]
)
assert FRAME.itemsize == 30

FLAG_HEARTBEAT, FLAG_FAULT, FLAG_LOW_BATTERY = 1, 2, 4
CALIBRATING = 0xFF
_PACK = struct.Struct(">BBQIHBBhhhHbB")  # FRAME without the CRC, field for field
assert _PACK.size == 28


def encode_frame(
    imei: int,
    time_s: int,
    seq: int,
    *,
    occupied: bool | None,
    mag_ut: tuple[float, float, float] = (12.0, -3.5, 41.0),
    battery_mv: int = 3600,
    temperature: int = 15,
    flags: int = 0,
) -> bytes:
    """Build one frame (used by the simulator and tests); ``occupied=None`` = calibrating."""
    x, y, z = (round(v * 10) for v in mag_ut)
    body = _PACK.pack(
        MAGIC,
        VERSION,
        imei,
        time_s,
        seq,
        CALIBRATING if occupied is None else int(occupied),
        flags,
        x,
        y,
        z,
        battery_mv,
        temperature,
        0,
    )
    return seal(body)


class ParkingSensorDecoder:
    """Decoder for the 30-byte parking-space sensor frame."""

    name = "parking-sensor"
    # application/octet-stream; which binary decoder applies comes from the device's profile
    content_formats: tuple[int, ...] = (42,)
    # parking_lot_occupancy is written by the occupancy stage from these frames' rows; it is
    # declared here so that every deployment that can receive the frames has the table
    tables: tuple[TableSpec, ...] = (PARKING_READINGS, PARKING_LOT_OCCUPANCY)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Validate the batch, then one row per valid frame, scaled, invalid markers NULL."""
        checked = validate(batch, FRAME, MAGIC, VERSION)
        rec = checked.records
        occ = rec["occupancy"]
        bad = np.flatnonzero((occ > 1) & (occ != CALIBRATING))
        keep = np.ones(rec.shape[0], dtype=np.bool_)
        rejects = list(checked.rejects)
        if bad.size:
            for j in bad.tolist():
                why = f"occupancy {int(occ[j])} (0 free, 1 occupied, 255 calibrating)"
                rejects.append(Reject(int(checked.frames[j]), f"parking_invalid: {why}"))
            keep[bad] = False
            rejects.sort(key=lambda r: r.index)
            rec, occ = rec[keep], occ[keep]
        cols = {
            "time": rec["time"].astype(np.int64) * 1_000_000,
            "seq": rec["seq"].astype(np.int32),
            "occupied": occ == 1,
            "flags": rec["flags"].astype(np.int16),
            "mag_x_ut": (rec["mag_x"] * 0.1).astype(np.float32),
            "mag_y_ut": (rec["mag_y"] * 0.1).astype(np.float32),
            "mag_z_ut": (rec["mag_z"] * 0.1).astype(np.float32),
            "battery_mv": rec["battery"].astype(np.int32),
            "temperature_c": rec["temperature"].astype(np.int16),
        }
        nulls = {
            "occupied": occ == CALIBRATING,
            "mag_x_ut": rec["mag_x"] == 0x7FFF,
            "mag_y_ut": rec["mag_y"] == 0x7FFF,
            "mag_z_ut": rec["mag_z"] == 0x7FFF,
            "battery_mv": rec["battery"] == 0xFFFF,
            "temperature_c": rec["temperature"] == 0x7F,
        }
        frames = checked.frames[keep]
        rows = TableRows(
            table=PARKING_READINGS.name,
            columns=cols,
            devices=checked.devices[keep],
            frame_index=frames,
            nulls=nulls,
        )
        return Decoded(rows={PARKING_READINGS.name: rows}, rejects=rejects, frames_ok=len(frames))


DECODER: Decoder = ParkingSensorDecoder()
