"""The canonical tag-read event, JSON, into ``vehicle_tag_reads``.

Readers of the national vehicle electronic identification (GB/T 35786-35790, GB/T 37987)
decrypt tags through the vendor's security module, and those standards are not public, so
cityflux defines one event that gateways emit (a JSON object, or an array of them)::

    {"reader": "G-0101", "antenna": 2, "epc": "E2003412...", "tid": "E280...",
     "plate": "粤B12345", "rssi": -61, "first_seen": "2026-01-01T08:00:00.250Z",
     "last_seen": "2026-01-01T08:00:00.400Z", "count": 3}

``epc`` and ``first_seen`` are required; times are RFC 3339 strings or epoch milliseconds;
``reader`` defaults to the device the transport names and must match it when both are given.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import TypeGuard

import msgspec
from msgspec import UNSET, UnsetType

from core.frames import Decoded, FrameBatch, Reject
from decoders.base import Decoder, TableSpec
from decoders.limits import (
    MAX_TEXT,
    LimitError,
    check_int,
    check_length,
    check_text,
    check_time_us,
    json_depth_exceeds,
    not_finite,
    out_of_range,
    text_problem,
)
from decoders.senml_json import PackError, load_json
from decoders.tables import VEHICLE_TAG_READS
from decoders.tagreads import TagRead, build

_HEX = frozenset("0123456789ABCDEF")
_HEX_RE = re.compile(r"[0-9A-Fa-f]+\Z")  # ASCII only: str.isdigit-like classes are not used


# epoch milliseconds whose µs timestamptz surely holds (the full range is checked otherwise)
_MS_MIN, _MS_MAX = -(2**40), 2**42


class EventError(ValueError):
    """An event that does not follow the canonical form."""


def _time_us(value: object, key: str) -> int:
    if type(value) is int and _MS_MIN <= value <= _MS_MAX:
        return value * 1000  # epoch milliseconds well inside timestamptz: the usual case
    if isinstance(value, bool) or value is None:
        raise EventError(f"'{key}' must be an RFC 3339 time or epoch milliseconds")
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitError(not_finite(key, value))
    if isinstance(value, int | float):
        ms = value * 1000
        if isinstance(ms, float) and not math.isfinite(ms):  # 1e306 * 1000 overflows
            raise LimitError(out_of_range(key, value, "timestamptz"))
        return check_time_us(key, round(ms))
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise EventError(f"'{key}' {value!r} is not an RFC 3339 time") from None
        if dt.tzinfo is None:
            raise EventError(f"'{key}' {value!r} has no UTC offset")
        return round(dt.timestamp() * 1e6)
    raise EventError(f"'{key}' must be an RFC 3339 time or epoch milliseconds")


def _usual_hex(value: object) -> TypeGuard[str]:
    """Whether ``value`` is hex text within MAX_TEXT (the usual EPC or TID): one C match."""
    return type(value) is str and _HEX_RE.match(value) is not None and len(value) <= MAX_TEXT


def _hex(value: object, key: str) -> str:
    if _usual_hex(value):
        return value.upper()  # the usual case
    if not isinstance(value, str) or not value:
        raise EventError(f"'{key}' must be a hex string")
    check_length(key, value)  # before the per-character check
    if not set(value.upper()) <= _HEX:
        raise EventError(f"'{key}' must be a hex string")
    return value.upper()


def _int(ev: dict[str, object], key: str, typ: str) -> int | None:
    v = ev.get(key)
    if v is None:
        return None
    if type(v) is int and -32768 <= v <= 32767:  # fits every column it goes to: the usual case
        return v
    if isinstance(v, float) and not math.isfinite(v):
        raise LimitError(not_finite(key, v))
    if isinstance(v, bool) or not isinstance(v, int):
        raise EventError(f"'{key}' must be an integer")
    return check_int(key, v, typ)  # the column's type (vehicle_tag_reads)


def _event(ev: object, hint: str, frame: int) -> TagRead:
    if not isinstance(ev, dict):
        raise EventError("an event must be a JSON object")
    reader = ev.get("reader", hint)
    if not isinstance(reader, str) or not reader:
        raise EventError("no reader (neither 'reader' nor a device in the topic)")
    if hint and reader != hint:
        raise EventError(f"device_mismatch: topic names {hint!r}, event names {reader!r}")
    check_length("reader", reader)
    if not hint and (not reader.isascii() or "\0" in reader):  # a hint is the registry's
        check_text("reader", reader)
    tid = _hex(ev["tid"], "tid") if ev.get("tid") is not None else None
    plate = ev.get("plate")
    if plate is not None and not isinstance(plate, str):
        raise EventError("'plate' must be a string")
    if plate is not None:
        check_length("plate", plate)
        if not plate.isascii() or "\0" in plate:
            check_text("plate", plate)
    if "epc" not in ev or "first_seen" not in ev:
        raise EventError("'epc' and 'first_seen' are required")
    last = ev.get("last_seen")
    return TagRead(
        _time_us(ev["first_seen"], "first_seen"),
        reader,
        _hex(ev["epc"], "epc"),
        tid,
        plate,
        _int(ev, "antenna", "int16"),
        _int(ev, "rssi", "int16"),
        None if last is None else _time_us(last, "last_seen"),
        _int(ev, "count", "int32"),
        frame,
    )


class _Usual(msgspec.Struct):
    """The shape of the usual event, checked in C by msgspec: a frame whose events all have it
    (and pass the checks of ``_usual``) skips the per-field checks of ``_event``; any other
    frame takes the checked path, which decides and gives the reason, so both paths accept
    the same frames with the same values (``tests/unit/test_tag_reads.py``)."""

    epc: str
    first_seen: int
    reader: str | UnsetType = UNSET
    tid: str | None = None
    plate: str | None = None
    antenna: int | None = None
    rssi: int | None = None
    last_seen: int | None = None
    count: int | None = None


_USUAL = msgspec.json.Decoder(_Usual | list[_Usual])
_I16, _I32 = (-(2**15), 2**15 - 1), (-(2**31), 2**31 - 1)


def _usual(payload: bytes, hint: str, frame: int) -> list[TagRead] | None:
    """The frame's reads if every event has the usual shape and passes every check; None
    sends the frame to the checked path (and is never a verdict)."""
    if json_depth_exceeds(payload):
        return None
    if not payload.isascii():
        try:
            payload.decode("utf-8")  # msgspec skips unknown fields without checking them
        except UnicodeDecodeError:
            return None
    try:
        doc = _USUAL.decode(payload)
    except msgspec.DecodeError:  # ValidationError included
        return None
    events = doc if isinstance(doc, list) else [doc]
    if not events:
        return None
    out = []
    for ev in events:
        reader = hint if ev.reader is UNSET else ev.reader
        if not reader or (hint and reader != hint) or len(reader) > MAX_TEXT:
            return None
        if not hint and (not reader.isascii() or "\0" in reader):
            return None
        epc, tid, plate = ev.epc, ev.tid, ev.plate
        if not _usual_hex(epc) or (tid is not None and not _usual_hex(tid)):
            return None
        if plate is not None and (len(plate) > MAX_TEXT or text_problem(plate)):
            return None
        first, last = ev.first_seen, ev.last_seen
        if not _MS_MIN <= first <= _MS_MAX or (last is not None and not _MS_MIN <= last <= _MS_MAX):
            return None
        antenna, rssi, count = ev.antenna, ev.rssi, ev.count
        if (
            (antenna is not None and not _I16[0] <= antenna <= _I16[1])
            or (rssi is not None and not _I16[0] <= rssi <= _I16[1])
            or (count is not None and not _I32[0] <= count <= _I32[1])
        ):
            return None
        out.append(
            TagRead(
                first * 1000,
                reader,
                epc.upper(),
                None if tid is None else tid.upper(),
                plate,
                antenna,
                rssi,
                None if last is None else last * 1000,
                count,
                frame,
            )
        )
    return out


class TagReadJsonDecoder:
    """Decoder for canonical tag-read events (one object or an array per frame)."""

    name = "tagread-json"
    content_formats: tuple[int, ...] = (50,)
    tables: tuple[TableSpec, ...] = (VEHICLE_TAG_READS,)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Every event becomes a row; a frame with one bad event is rejected whole."""
        reads: list[TagRead] = []
        rejects: list[Reject] = []
        hints = batch.device_hints
        for i, payload in enumerate(batch.payloads):
            usual = _usual(payload, hints[i], i)
            if usual is not None:
                reads += usual
                continue
            try:
                doc = load_json(payload, "event")
            except PackError as exc:
                rejects.append(Reject(i, str(exc)))
                continue
            events = doc if isinstance(doc, list) else [doc]
            try:
                if not events:
                    raise EventError("empty array")
                reads += [_event(ev, batch.device_hints[i], i) for ev in events]
            except LimitError as exc:
                rejects.append(Reject(i, str(exc)))
            except (EventError, OverflowError, ValueError) as exc:
                rejects.append(Reject(i, f"tagread_invalid: {exc}"))
        return Decoded(
            rows={VEHICLE_TAG_READS.name: build(reads)},
            rejects=rejects,
            frames_ok=len(batch) - len(rejects),
        )


DECODER: Decoder = TagReadJsonDecoder()
