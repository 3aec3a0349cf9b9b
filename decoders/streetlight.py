"""cityflux streetlight-controller frame v1 (34 bytes, big-endian) into streetlight_status.

A compact frame (decoders/compact.py): the whole batch decodes with one ``np.frombuffer`` over
a structured dtype; byte table in decoders/README.md. Fault bits follow the uCIFI outdoor
lamp controller object (LwM2M 3416: lamp failure, control-gear failure, relay failure,
day-burner). Invalid markers (0xFFFF, 0xFFFFFFFF, 0xFF, 0x7F) are stored as NULL.
"""

from __future__ import annotations

import struct

import numpy as np

from core.frames import Decoded, FrameBatch, TableRows
from decoders.base import Decoder, TableSpec
from decoders.compact import HEADER, seal, sequence, validate
from decoders.tables import STREETLIGHT_STATUS

MAGIC = 0xCF
VERSION = 1

FRAME = np.dtype(
    [
        *HEADER,  # 0-15 magic 0xCF, version 1, IMEI, time, seq (decoders/compact.py)
        ("voltage", ">u2"),  # 16 0.1 V, 0xFFFF = invalid
        ("current", ">u2"),  # 18 mA, 0xFFFF = invalid
        ("power", ">u2"),  # 20 0.1 W, 0xFFFF = invalid
        ("energy", ">u4"),  # 22 Wh (meter), 0xFFFFFFFF = invalid
        ("dimming", "u1"),  # 26 %, 0-100, 0xFF = invalid
        ("lamp", "u1"),  # 27 0 off, 1 on
        ("faults", ">u2"),  # 28 bit0 lamp, bit1 control gear, bit2 relay, bit3 day-burner,
        #                         bit4 over-temperature
        ("temperature", "i1"),  # 30 °C, 0x7F = invalid
        ("reserved", "u1"),  # 31 0
        ("crc", ">u2"),  # 32 CRC-16/CCITT-FALSE over bytes 0..31
    ]
)
assert FRAME.itemsize == 34

FAULT_LAMP, FAULT_GEAR, FAULT_RELAY, FAULT_DAY_BURNER, FAULT_OVER_TEMPERATURE = 1, 2, 4, 8, 16
_PACK = struct.Struct(">BBQIHHHHIBBHbB")  # FRAME without the CRC, field for field
assert _PACK.size == 32


def encode_frame(
    imei: int,
    time_s: int,
    seq: int,
    *,
    voltage: float,
    current: float,
    power: float,
    energy_kwh: float,
    dimming: int,
    lamp_on: bool,
    faults: int = 0,
    temperature: int = 25,
) -> bytes:
    """Build one frame (used by the simulator and tests); current in A, energy in kWh."""
    body = _PACK.pack(
        MAGIC,
        VERSION,
        imei,
        time_s,
        seq,
        round(voltage * 10),
        round(current * 1000),
        round(power * 10),
        round(energy_kwh * 1000),
        dimming,
        int(lamp_on),
        faults,
        temperature,
        0,
    )
    return seal(body)


class StreetlightDecoder:
    """Decoder for the 34-byte streetlight-controller frame."""

    name = "streetlight"
    # application/octet-stream; which binary decoder applies comes from the device's profile
    content_formats: tuple[int, ...] = (42,)
    tables: tuple[TableSpec, ...] = (STREETLIGHT_STATUS,)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Validate the batch, then one row per valid frame, scaled, invalid markers NULL."""
        checked = validate(batch, FRAME, MAGIC, VERSION)
        rec = checked.records
        cols = {
            "time": rec["time"].astype(np.int64) * 1_000_000,
            "voltage_v": (rec["voltage"] * 0.1).astype(np.float32),
            "current_a": (rec["current"] * 0.001).astype(np.float32),
            "power_w": (rec["power"] * 0.1).astype(np.float32),
            "energy_kwh": rec["energy"] * 0.001,
            "dimming_pct": rec["dimming"].astype(np.int16),
            "lamp_on": rec["lamp"] != 0,
            "faults": rec["faults"].astype(np.int32),
            "temperature_c": rec["temperature"].astype(np.int16),
        }
        nulls = {
            "voltage_v": rec["voltage"] == 0xFFFF,
            "current_a": rec["current"] == 0xFFFF,
            "power_w": rec["power"] == 0xFFFF,
            "energy_kwh": rec["energy"] == 0xFFFFFFFF,
            "dimming_pct": rec["dimming"] > 100,
            "temperature_c": rec["temperature"] == 0x7F,
        }
        rows = TableRows(
            table=STREETLIGHT_STATUS.name,
            columns=cols,
            devices=checked.devices,
            frame_index=checked.frames,
            nulls=nulls,
        )
        return Decoded(
            rows={STREETLIGHT_STATUS.name: rows},
            rejects=checked.rejects,
            frames_ok=len(checked.frames),
            numbers=[sequence(checked)],
        )


DECODER: Decoder = StreetlightDecoder()
