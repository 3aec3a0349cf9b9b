"""LLRP RO_ACCESS_REPORT (EPCglobal LLRP 1.0.1/1.1) into ``vehicle_tag_reads``.

Message header: 3 reserved bits, 3-bit version, 10-bit type (61 = RO_ACCESS_REPORT), 32-bit
length of the whole message, 32-bit message id. Parameters are TLV (6 reserved bits, 10-bit
type, 16-bit length of the whole parameter) or TV (first bit 1, 7-bit type, fixed length by
type). Each TagReportData (TLV 240) gives one read: EPC-96 (TV 13) or EPCData (TLV 241),
AntennaID, PeakRSSI, First/LastSeenTimestampUTC (µs), TagSeenCount. The reader is the device
the transport names (the gantry reader's id in the topic or path).
"""

from __future__ import annotations

import struct

from core.frames import Decoded, FrameBatch, Reject
from decoders.base import Decoder, TableSpec
from decoders.limits import LimitError, check_int, check_length, check_time_us
from decoders.tables import VEHICLE_TAG_READS
from decoders.tagreads import TagRead, build

RO_ACCESS_REPORT = 61
TAG_REPORT_DATA, EPC_DATA = 240, 241
# LLRP TV parameters: type -> value length in bytes (LLRP 1.0.1 §16.2, TV-encoded params).
TV_LENGTH = {
    1: 2,
    2: 8,
    3: 8,
    4: 8,
    5: 8,
    6: 1,
    7: 2,
    8: 2,
    9: 4,
    10: 2,
    11: 2,
    12: 2,
    13: 12,
    14: 2,
    15: 2,
    16: 4,
}


class LLRPError(ValueError):
    """A message that breaks the LLRP encoding."""


def _params(data: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    """(type, value) of every parameter between start and end."""
    out = []
    p = start
    while p < end:
        if data[p] & 0x80:  # TV
            typ = data[p] & 0x7F
            n = TV_LENGTH.get(typ)
            if n is None:
                raise LLRPError(f"unknown TV parameter {typ} at offset {p}")
            if p + 1 + n > end:
                raise LLRPError(f"truncated: TV parameter {typ} needs {n} bytes at offset {p}")
            out.append((typ, data[p + 1 : p + 1 + n]))
            p += 1 + n
        else:
            if p + 4 > end:
                raise LLRPError(f"truncated: TLV header at offset {p}")
            typ, length = struct.unpack_from(">HH", data, p)
            typ &= 0x3FF
            if length < 4 or p + length > end:
                raise LLRPError(f"TLV parameter {typ} at offset {p} has bad length {length}")
            out.append((typ, data[p + 4 : p + length]))
            p += length
    return out


def _read(value: bytes, reader: str, frame: int) -> TagRead:
    epc = None
    antenna = rssi = count = None
    first = last = None
    for typ, v in _params(value, 0, len(value)):
        if typ == 13:
            epc = v.hex().upper()
        elif typ == EPC_DATA:
            (bits,) = struct.unpack_from(">H", v, 0)
            if 2 + (bits + 7) // 8 > len(v):
                raise LLRPError(f"truncated: EPCData says {bits} bits, has {len(v) - 2} bytes")
            epc = v[2 : 2 + (bits + 7) // 8].hex().upper()
        elif typ == 1:
            (antenna,) = struct.unpack(">H", v)
            check_int("antenna", antenna, "int16")  # vehicle_tag_reads.antenna is smallint
        elif typ == 6:
            (rssi,) = struct.unpack(">b", v)
        elif typ == 2:
            (first,) = struct.unpack(">Q", v)
        elif typ == 4:
            (last,) = struct.unpack(">Q", v)
        elif typ == 8:
            (count,) = struct.unpack(">H", v)
    if epc is None:
        raise LLRPError("TagReportData without EPC")
    check_length("epc", epc)  # EPCData may carry up to 65535 bits
    if first is None:
        raise LLRPError("TagReportData without FirstSeenTimestampUTC")
    check_time_us("first_seen", first)
    if last is not None:
        check_time_us("last_seen", last)
    return TagRead(first, reader, epc, None, None, antenna, rssi, last, count, frame)


def encode_report(reads: list[dict[str, int | str]], message_id: int = 1) -> bytes:
    """An RO_ACCESS_REPORT with one TagReportData per read (simulator and tests).

    Each read: ``epc`` (24 hex digits, EPC-96), ``antenna``, ``rssi``, ``first_us``,
    ``last_us``, ``count``.
    """
    body = b""
    for r in reads:
        inner = (
            b"\x8d"
            + bytes.fromhex(str(r["epc"]))
            + b"\x81"
            + struct.pack(">H", int(r["antenna"]))
            + b"\x86"
            + struct.pack(">b", int(r["rssi"]))
            + b"\x82"
            + struct.pack(">Q", int(r["first_us"]))
            + b"\x84"
            + struct.pack(">Q", int(r["last_us"]))
            + b"\x88"
            + struct.pack(">H", int(r["count"]))
        )
        body += struct.pack(">HH", TAG_REPORT_DATA, 4 + len(inner)) + inner
    return struct.pack(">HII", (1 << 10) | RO_ACCESS_REPORT, 10 + len(body), message_id) + body


class LLRPDecoder:
    """Decoder for LLRP RO_ACCESS_REPORT messages, one message per frame."""

    name = "llrp"
    content_formats: tuple[int, ...] = ()
    tables: tuple[TableSpec, ...] = (VEHICLE_TAG_READS,)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Every TagReportData of every report becomes a row; a bad report is rejected whole."""
        reads: list[TagRead] = []
        rejects: list[Reject] = []
        for i, data in enumerate(batch.payloads):
            try:
                reads += self._report(data, batch.device_hints[i], i)
            except LLRPError as exc:
                rejects.append(
                    Reject(
                        i, str(exc) if str(exc).startswith("truncated") else f"llrp_invalid: {exc}"
                    )
                )
            except struct.error:
                rejects.append(Reject(i, "truncated: parameter shorter than its fields"))
            except LimitError as exc:
                rejects.append(Reject(i, str(exc)))
        return Decoded(
            rows={VEHICLE_TAG_READS.name: build(reads)},
            rejects=rejects,
            frames_ok=len(batch) - len(rejects),
        )

    @staticmethod
    def _report(data: bytes, reader: str, frame: int) -> list[TagRead]:
        if len(data) < 10:
            raise LLRPError(f"truncated: need 10 header bytes, got {len(data)}")
        head, length, _msg_id = struct.unpack_from(">HII", data, 0)
        version, typ = (head >> 10) & 0x7, head & 0x3FF
        if typ != RO_ACCESS_REPORT:
            raise LLRPError(f"message type {typ} is not RO_ACCESS_REPORT (61)")
        if version not in (1, 2):
            raise LLRPError(f"unsupported LLRP version {version}")
        if length != len(data):
            raise LLRPError(f"header says {length} bytes, message has {len(data)}")
        if not reader:
            raise LLRPError("no reader id (the transport must name the reader)")
        return [
            _read(v, reader, frame) for t, v in _params(data, 10, len(data)) if t == TAG_REPORT_DATA
        ]


DECODER: Decoder = LLRPDecoder()
