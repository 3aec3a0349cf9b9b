"""LwM2M TLV (OMA LwM2M 1.0 §6.4.3, Content-Format 11542, legacy 1542) into env_readings.

Type byte: bits 7-6 kind (00 object instance, 01 resource instance, 10 multiple resource,
11 resource with value), bit 5 16-bit identifier, bits 4-3 length size (0 = length in bits
2-0, 1/2/3 = 8/16/24-bit length field). Integers are big-endian signed 1/2/4/8 bytes, floats
IEEE 754 4/8 bytes, booleans one byte.

A TLV payload does not name its object: the object (and instance) come from the last numeric
levels of the source path (``…/3303`` or ``…/3303/0``, as a CoAP uplink path or a Notify of
an observed path names them). Numeric resources of the IPSO objects 3301, 3302, 3303, 3304, 3316,
3317, 3328, 3330, 3331, the uCIFI outdoor lamp controller 3416 and the Device object 3 become
readings named ``<object>[.<resource>]`` (``temperature``, ``temperature.max``,
``lamp.voltage``); strings and opaque values are not metrics and are skipped. A timestamp
resource (5518) sets the reading time, else the receive time is used.
"""

from __future__ import annotations

import re
import struct
from typing import cast

from core.frames import Decoded, FrameBatch, Reject
from decoders.base import Decoder, TableSpec
from decoders.limits import LimitError, check_finite, check_time_us, too_deep
from decoders.rows import EnvReadingsBuilder
from decoders.tables import ENV_READINGS

_PATH = re.compile(r"/(\d{1,5})(?:/(\d{1,5}))?/?$")

# IPSO Smart Objects (LwM2M registry): object id -> metric name.
OBJECTS = {
    3301: "illuminance",
    3302: "presence",
    3303: "temperature",
    3304: "humidity",
    3316: "voltage",
    3317: "current",
    3328: "power",
    3330: "distance",
    3331: "energy",
    3416: "lamp",
    3: "device",
}
# IPSO common resources: id -> (suffix, type); "" means the object's own metric.
IPSO_RESOURCES = {
    5700: ("", "float"),
    5601: ("min", "float"),
    5602: ("max", "float"),
    5603: ("range_min", "float"),
    5604: ("range_max", "float"),
    5805: ("cumulative", "float"),
    5518: ("time", "time"),
}
# uCIFI Outdoor Lamp Controller, LwM2M object 3416 (shared/PROTOCOLS.md).
LAMP_RESOURCES = {
    1: ("command", "int"),
    3: ("dimming", "int"),
    5: ("failure", "bool"),
    7: ("gear_failure", "bool"),
    9: ("relay_failure", "bool"),
    10: ("day_burner", "bool"),
    15: ("operating_hours", "int"),
    21: ("gear_temperature", "float"),
    44: ("voltage", "float"),
    45: ("current", "float"),
    46: ("power", "float"),
    47: ("energy", "float"),
    62: ("unit_temperature", "float"),
}
# IPSO Presence 3302: 5500 Digital Input State (a parking-space sensor: occupied or free),
# 5501 Digital Input Counter.
PRESENCE_RESOURCES = {
    5500: ("", "bool"),
    5501: ("count", "int"),
    5518: ("time", "time"),
}
# LwM2M Device object 3 (numeric resources only).
DEVICE_RESOURCES = {
    7: ("power_source_voltage", "int"),
    8: ("power_source_current", "int"),
    9: ("battery_level", "int"),
    10: ("memory_free", "int"),
    11: ("error_code", "int"),
    13: ("current_time", "time"),
}


class TLVError(ValueError):
    """A TLV stream that breaks the encoding."""


# Object instance > multiple resource > resource instance: the deepest a TLV payload nests
# (LwM2M 1.0 §6.4.3.1). Deeper containers are rejected, and the parser keeps its own stack.
MAX_TLV_DEPTH = 3


def parse(data: bytes) -> list[tuple[int, int, object]]:
    """(kind, id, value) entries; value is bytes, or a nested list for kinds 0 and 2.

    Iterative: each open container is a (end, entries, start) frame on an explicit stack, so
    the input's nesting never reaches Python's recursion limit; offsets in reasons are
    relative to the enclosing container's value, as the TLV lengths are."""
    root: list[tuple[int, int, object]] = []
    stack: list[tuple[int, list[tuple[int, int, object]], int]] = [(len(data), root, 0)]
    p = 0
    while stack:
        end, out, base = stack[-1]
        if p >= end:
            stack.pop()
            continue
        t = data[p]
        kind, wide, size = t >> 6, bool(t & 0x20), (t >> 3) & 0x3
        at = p - base
        p += 1
        id_len = 2 if wide else 1
        if p + id_len + size > end:
            raise TLVError(f"truncated: TLV header at offset {at}")
        ident = int.from_bytes(data[p : p + id_len], "big")
        p += id_len
        length = (t & 0x7) if size == 0 else int.from_bytes(data[p : p + size], "big")
        p += size
        if p + length > end:
            raise TLVError(f"truncated: TLV {ident} needs {length} bytes at offset {p - base}")
        if kind in (0, 2):
            if len(stack) >= MAX_TLV_DEPTH:
                raise LimitError(too_deep("TLV", MAX_TLV_DEPTH))
            entries: list[tuple[int, int, object]] = []
            out.append((kind, ident, entries))
            stack.append((p + length, entries, p))
        else:
            out.append((kind, ident, data[p : p + length]))
            p += length
    return root


def _value(raw: bytes, typ: str, ident: int) -> float:
    if typ == "float":
        if len(raw) == 4:
            return float(struct.unpack(">f", raw)[0])
        if len(raw) == 8:
            return float(struct.unpack(">d", raw)[0])
        raise TLVError(f"resource {ident}: a float has 4 or 8 bytes, got {len(raw)}")
    if len(raw) not in (1, 2, 4, 8):
        raise TLVError(f"resource {ident}: an integer has 1, 2, 4 or 8 bytes, got {len(raw)}")
    value = int.from_bytes(raw, "big", signed=typ != "bool")
    if typ == "bool" and value not in (0, 1):
        raise TLVError(f"resource {ident}: a boolean is 0 or 1, got {value}")
    return float(value)


def _resources(obj: int) -> dict[int, tuple[str, str]]:
    if obj == 3416:
        return LAMP_RESOURCES
    if obj == 3:
        return DEVICE_RESOURCES
    if obj == 3302:
        return PRESENCE_RESOURCES
    return IPSO_RESOURCES


def readings(
    obj: int, instance: int, entries: list[tuple[int, int, object]], received_s: float
) -> list[tuple[str, float, float]]:
    """(metric, time_s, value) for the numeric resources of one object instance."""
    table = _resources(obj)
    base = OBJECTS[obj] + (f"[{instance}]" if instance else "")
    values: list[tuple[str, float]] = []
    when = received_s
    for kind, ident, value in entries:
        spec = table.get(ident)
        if spec is None:
            continue
        suffix, typ = spec
        items = (
            [v for k, _, v in cast(list[tuple[int, int, object]], value) if k == 1]
            if kind == 2
            else [value]
        )
        name = f"{base}.{suffix}" if suffix else base
        for n, raw in enumerate(items):
            if not isinstance(raw, bytes):
                raise TLVError(f"resource {ident}: an object instance where a value belongs")
            number = _value(raw, typ, ident)
            metric = name if len(items) == 1 else f"{name}.{n}"
            check_finite(metric, number)
            if typ == "time" and ident == 5518:
                check_time_us(metric, round(number * 1e6))
                when = number
                continue
            values.append((metric, number))
    return [(name, when, v) for name, v in values]


class LwM2MTlvDecoder:
    """Decoder for LwM2M TLV payloads of IPSO, uCIFI 3416 and Device objects."""

    name = "lwm2m-tlv"
    content_formats: tuple[int, ...] = (11542, 1542)
    tables: tuple[TableSpec, ...] = (ENV_READINGS,)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Each payload is the object (instances) or instance the source path names."""
        rows = EnvReadingsBuilder()
        rejects: list[Reject] = []
        for i, payload in enumerate(batch.payloads):
            try:
                out = self._frame(payload, batch.sources[i], batch.received_us[i] / 1e6)
            except TLVError as exc:
                text = str(exc)
                rejects.append(
                    Reject(i, text if text.startswith("truncated") else f"lwm2m_invalid: {text}")
                )
                continue
            except LimitError as exc:
                rejects.append(Reject(i, str(exc)))
                continue
            device = batch.device_hints[i].encode()
            if not device:
                rejects.append(
                    Reject(i, "lwm2m_invalid: no device (the transport names the endpoint)")
                )
                continue
            for metric, when, value in out:
                rows.add(round(when * 1e6), device, metric.encode(), value, i)
        decoded = Decoded(rejects=rejects, frames_ok=len(batch) - len(rejects))
        decoded.rows[ENV_READINGS.name] = rows.build()
        return decoded

    @staticmethod
    def _frame(payload: bytes, source: str, received_s: float) -> list[tuple[str, float, float]]:
        m = _PATH.search(source)
        if m is None:
            raise TLVError(f"source {source!r} names no object (…/<object>[/<instance>])")
        obj = int(m.group(1))
        if obj not in OBJECTS:
            raise TLVError(f"object {obj} is not supported")
        entries = parse(payload)
        if m.group(2) is not None:
            return readings(obj, int(m.group(2)), entries, received_s)
        if entries and all(k == 0 for k, _, _ in entries):
            out: list[tuple[str, float, float]] = []
            for _, inst, sub in entries:
                out += readings(obj, inst, cast(list[tuple[int, int, object]], sub), received_s)
            return out
        return readings(obj, 0, entries, received_s)


DECODER: Decoder = LwM2MTlvDecoder()
