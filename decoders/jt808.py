"""JT/T 808 road-transport vehicle terminal messages, 2013 and 2019 editions.

``0x7E | header | body | checksum | 0x7E``, escaped after the checksum is computed
(0x7E → 0x7D 0x02, 0x7D → 0x7D 0x01; JT/T 808-2019 §4.4.2). Checksums of the whole batch
are computed with one ``np.bitwise_xor.reduceat``; headers and bodies are read with ``struct``.

- 0x0200 location report and 0x0704 batches of them → ``vehicle_positions`` (fix time BCD,
  UTC+8 → UTC; extra items 0x01 mileage, 0x02 fuel, 0x30 signal, 0x31 satellites).
- Replies for the transport to send back (JT/T 808-2013 §8.1–8.6): 0x8100 to a 0x0100
  registration (result 0 and an authentication code, HMAC-SHA256 of the phone number under
  ``CITYFLUX_JT808_AUTH_KEY``, so no state is kept); 0x8001 platform general reply to 0x0102
  authentication (0 if the code matches, else 1), to 0x0002 heartbeats and 0x0003 logout.
  Location reports are acknowledged by the transport (MQTT PUBACK after commit), not with
  0x8001 (which cost a third of the decoder's speed). Whether the terminal is registered is
  the registry's decision (its frames with rows go through the profile's unknown-device
  policy).
- The device is the terminal's phone number (BCD[6] in 2013, BCD[10] in 2019).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct

import numpy as np

from core.frames import Decoded, FrameBatch, FrameNumbers, Reject, TableRows
from decoders.base import Decoder, TableSpec
from decoders.cst import cst_to_utc_us
from decoders.limits import LimitError, check_int
from decoders.rows import nullable_column
from decoders.tables import VEHICLE_POSITIONS

_BAD_ESCAPE = re.compile(rb"\x7d(?![\x01\x02])")
_LOCATION = struct.Struct(">IIIIHHH6s")  # alarm, status, lat, lon, alt, speed, dir, time
LOCATION_IDS = (0x0200,)
KNOWN_IDS = frozenset((0x0002, 0x0100, 0x0102, 0x0200, 0x0704, 0x0001, 0x0003))
STATUS_SOUTH, STATUS_WEST = 1 << 2, 1 << 3


class JT808Error(ValueError):
    """A message that breaks the standard."""


def escape(raw: bytes) -> bytes:
    """Escape header+body+checksum for the wire (JT/T 808 §4.4.2)."""
    return raw.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02")


def unescape(data: bytes) -> bytes:
    """Undo the escaping (the caller has checked every 0x7D is followed by 01 or 02)."""
    return data.replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")


def _bcd(raw: bytes) -> str:
    text = raw.hex()
    if not text.isdigit():
        raise JT808Error(f"BCD field {text!r} has non-decimal digits")
    return text


GENERAL_REPLY, REGISTRATION_REPLY = 0x8001, 0x8100
# Location reports (0x0200/0x0704) get no 0x8001 here: over MQTT their acknowledgement is the
# PUBACK sent after the commit; a TCP gateway in front of terminals answers them itself.
_ACKED = frozenset((0x0002, 0x0003))


def auth_code(phone: str) -> str:
    """The authentication code a registration is answered with (and 0x0102 must present)."""
    key = os.environ.get("CITYFLUX_JT808_AUTH_KEY", "cityflux").encode()
    return hmac.new(key, phone.encode(), hashlib.sha256).hexdigest()[:16].upper()


def _fix_time_us(raw: bytes) -> int:
    t = _bcd(raw)
    y, mo, d, h, mi, s = (int(t[k : k + 2]) for k in range(0, 12, 2))
    us = cst_to_utc_us(2000 + y, mo, d, h, mi, s)
    if us is None:
        raise JT808Error(f"bad fix time {t!r}")
    return us


def frame(
    msg_id: int,
    phone: str,
    serial: int,
    body: bytes,
    *,
    version_2019: bool = False,
    protocol_version: int = 1,
) -> bytes:
    """A complete escaped frame (used by the simulator and tests)."""
    props = len(body) | (0x4000 if version_2019 else 0)
    head = struct.pack(">HH", msg_id, props)
    if version_2019:
        head += bytes([protocol_version]) + bytes.fromhex(phone.rjust(20, "0"))
    else:
        head += bytes.fromhex(phone.rjust(12, "0"))
    head += struct.pack(">H", serial)
    raw = head + body
    check = 0
    for b in raw:
        check ^= b
    return b"\x7e" + escape(raw + bytes([check])) + b"\x7e"


def location_body(
    lat: float,
    lon: float,
    *,
    time: str,
    speed_kmh: float = 0.0,
    heading: int = 0,
    altitude: int = 0,
    alarm: int = 0,
    status: int = 0x3,
    extras: bytes = b"",
) -> bytes:
    """A 0x0200 body; ``time`` is YYMMDDhhmmss in UTC+8."""
    if lat < 0:
        status |= STATUS_SOUTH
    if lon < 0:
        status |= STATUS_WEST
    return (
        _LOCATION.pack(
            alarm,
            status,
            round(abs(lat) * 1e6),
            round(abs(lon) * 1e6),
            altitude,
            round(speed_kmh * 10),
            heading,
            bytes.fromhex(time),
        )
        + extras
    )


class JT808Decoder:
    """Decoder for JT/T 808 messages, one escaped frame per message."""

    name = "jt808"
    content_formats: tuple[int, ...] = ()
    tables: tuple[TableSpec, ...] = (VEHICLE_POSITIONS,)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Unescape and checksum the batch, then read each message's header and body."""
        rejects: list[Reject] = []
        raws: list[bytes] = []
        index: list[int] = []
        for i, payload in enumerate(batch.payloads):
            if len(payload) < 2 or payload[0] != 0x7E or payload[-1] != 0x7E:
                rejects.append(Reject(i, "bad_delimiter: frame must start and end with 0x7E"))
                continue
            inner = payload[1:-1]
            if b"\x7e" in inner:
                rejects.append(Reject(i, "bad_delimiter: unescaped 0x7E inside the frame"))
                continue
            bad = _BAD_ESCAPE.search(inner)
            if bad:
                rejects.append(
                    Reject(i, f"bad_escape: 0x7D not followed by 01/02 at offset {bad.start() + 1}")
                )
                continue
            raw = unescape(inner)
            if len(raw) < 13:
                rejects.append(Reject(i, f"truncated: need at least 13 bytes, got {len(raw)}"))
                continue
            raws.append(raw)
            index.append(i)
        if raws:
            lens = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws))
            flat = np.frombuffer(b"".join(raws), dtype=np.uint8)
            starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
            sums = np.bitwise_xor.reduceat(flat, starts)  # XOR incl. the checksum byte: 0 if ok
        rows: list[tuple[object, ...]] = []
        replies: list[tuple[int, bytes]] = []
        serials: list[tuple[int, str, int]] = []  # (frame, device, message serial number)
        for j, i in enumerate(index):
            raw = raws[j]
            if sums[j] != 0:
                expected = int(sums[j]) ^ raw[-1]
                rejects.append(
                    Reject(i, f"checksum_mismatch expected={expected:02X} got={raw[-1]:02X}")
                )
                continue
            mark = len(rows)
            try:
                reply = self._message(raw[:-1], i, batch.device_hints[i], rows, serials)
                if reply:
                    replies.append((i, reply))
            except JT808Error as exc:
                del rows[mark:]
                rejects.append(Reject(i, f"jt808_invalid: {exc}"))
            except struct.error:
                del rows[mark:]
                rejects.append(Reject(i, "truncated: body shorter than its fields"))
            except LimitError as exc:
                del rows[mark:]
                rejects.append(Reject(i, str(exc)))
        rejects.sort(key=lambda r: r.index)
        return Decoded(
            rows={VEHICLE_POSITIONS.name: _build(rows)},
            rejects=rejects,
            frames_ok=len(batch) - len(rejects),
            replies=replies,
            numbers=[_serials(serials)],
        )

    @staticmethod
    def _message(
        raw: bytes,
        i: int,
        hint: str,
        rows: list[tuple[object, ...]],
        serials: list[tuple[int, str, int]],
    ) -> bytes:
        """Read one message into ``rows``; return the reply frame it calls for (or b"")."""
        msg_id, props = struct.unpack_from(">HH", raw, 0)
        length, split, v2019 = props & 0x3FF, bool(props & 0x2000), bool(props & 0x4000)
        if props & 0x1C00:
            raise JT808Error("encrypted body (RSA) is not supported")
        pos = 4
        version = 1
        if v2019:
            version, pos = raw[pos], pos + 1  # protocol version
            phone, pos = _bcd(raw[pos : pos + 10]), pos + 10
        else:
            phone, pos = _bcd(raw[pos : pos + 6]), pos + 6
        (serial,) = struct.unpack_from(">H", raw, pos)
        pos += 2
        if split:
            pos += 4
        body = raw[pos:]
        if len(body) != length:
            raise JT808Error(f"header says {length} body bytes, got {len(body)}")
        device = phone.lstrip("0") or "0"
        if hint and hint not in (device, phone):
            raise JT808Error(f"device_mismatch: topic names {hint!r}, frame carries {phone}")
        if msg_id == 0x0200:
            rows.append(_location(body, device, i))
        elif msg_id == 0x0704:
            count, _kind = struct.unpack_from(">HB", body, 0)
            p = 3
            for _ in range(count):
                (n,) = struct.unpack_from(">H", body, p)
                item = body[p + 2 : p + 2 + n]
                if len(item) != n:
                    raise JT808Error("0x0704 item shorter than its length")
                rows.append(_location(item, device, i))
                p += 2 + n
            if p != len(body):
                raise JT808Error(f"0x0704 has {len(body) - p} bytes after its {count} items")
        elif msg_id not in KNOWN_IDS:
            raise JT808Error(f"unsupported message id 0x{msg_id:04X}")
        # the message header's serial number: "counted up from 0 in sending order, cyclically"
        # (JT/T 808-2013 and -2019, message header table): one counter per terminal
        serials.append((i, device, serial))

        def reply(reply_id: int, body: bytes) -> bytes:
            return frame(
                reply_id, phone, serial, body, version_2019=v2019, protocol_version=version
            )

        if msg_id == 0x0100:
            code = auth_code(device).encode()
            return reply(REGISTRATION_REPLY, struct.pack(">HB", serial, 0) + code)
        if msg_id == 0x0102:
            sent = body[1 : 1 + body[0]] if v2019 and body else body
            result = 0 if hmac.compare_digest(sent, auth_code(device).encode()) else 1
            return reply(GENERAL_REPLY, struct.pack(">HHB", serial, msg_id, result))
        if msg_id in _ACKED:
            return reply(GENERAL_REPLY, struct.pack(">HHB", serial, msg_id, 0))
        return b""


def _serials(serials: list[tuple[int, str, int]]) -> FrameNumbers:
    """The message serial numbers (u16, wrap) of the batch's valid messages."""
    return FrameNumbers(
        "jt808",
        1 << 16,
        np.array([d.encode() for _, d, _ in serials] or [b""], dtype=np.bytes_)[: len(serials)],
        np.fromiter((i for i, _, _ in serials), dtype=np.int32, count=len(serials)),
        np.fromiter((n for _, _, n in serials), dtype=np.int64, count=len(serials)),
    )


def _location(body: bytes, device: str, i: int) -> tuple[object, ...]:
    alarm, status, lat, lon, alt, speed, heading, when = _LOCATION.unpack_from(body, 0)
    check_int("heading", heading, "int16")  # vehicle_positions.heading_deg is smallint
    t = _fix_time_us(when)
    mileage = fuel = signal = sats = None
    p = _LOCATION.size
    while p < len(body):
        if p + 2 > len(body):
            raise JT808Error("extra item header cut short")
        item, n = body[p], body[p + 1]
        value = body[p + 2 : p + 2 + n]
        if len(value) != n:
            raise JT808Error(f"extra item 0x{item:02X} shorter than its length {n}")
        if item == 0x01 and n == 4:
            mileage = int.from_bytes(value, "big") * 0.1
        elif item == 0x02 and n == 2:
            fuel = int.from_bytes(value, "big") * 0.1
        elif item == 0x30 and n == 1:
            signal = value[0]
        elif item == 0x31 and n == 1:
            sats = value[0]
        p += 2 + n
    lat_deg = lat / 1e6 * (-1 if status & STATUS_SOUTH else 1)
    lon_deg = lon / 1e6 * (-1 if status & STATUS_WEST else 1)
    return (
        t,
        device,
        lat_deg,
        lon_deg,
        alt,
        speed * 0.1,
        heading,
        alarm,
        status,
        mileage,
        fuel,
        signal,
        sats,
        i,
    )


def _build(rows: list[tuple[object, ...]]) -> TableRows:
    cols: list[tuple[object, ...]] = (
        list(zip(*rows, strict=True)) if rows else [() for _ in range(14)]
    )
    mileage, mileage_null = nullable_column(list(cols[9]), "f8")
    fuel, fuel_null = nullable_column(list(cols[10]), "f4")
    signal, signal_null = nullable_column(list(cols[11]), "i2")
    sats, sats_null = nullable_column(list(cols[12]), "i2")
    return TableRows(
        table=VEHICLE_POSITIONS.name,
        columns={
            "time": np.array(cols[0], dtype=np.int64),
            "lat": np.array(cols[2], dtype=np.float64),
            "lon": np.array(cols[3], dtype=np.float64),
            "altitude_m": np.array(cols[4], dtype=np.int32),
            "speed_kmh": np.array(cols[5], dtype=np.float32),
            "heading_deg": np.array(cols[6], dtype=np.int16),
            "alarm": np.array(cols[7], dtype=np.int64),
            "status": np.array(cols[8], dtype=np.int64),
            "mileage_km": mileage,
            "fuel_l": fuel,
            "signal": signal,
            "satellites": sats,
        },
        devices=np.array([str(d).encode() for d in cols[1]] or [b""], dtype=np.bytes_)[: len(rows)],
        frame_index=np.array(cols[13], dtype=np.int32),
        nulls={
            "mileage_km": mileage_null,
            "fuel_l": fuel_null,
            "signal": signal_null,
            "satellites": sats_null,
        },
    )


DECODER: Decoder = JT808Decoder()
