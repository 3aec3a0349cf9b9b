"""SenML JSON (RFC 8428, application/senml+json, CoAP Content-Format 110) into env_readings.

Base fields (bn, bt, bu, bv, bs, bver) are resolved into every record that follows them in
the pack (RFC 8428 §4.6). Times below 2**28 are relative to the receive time (§4.5.3).
Numeric values (``v``), booleans (``vb`` as 0/1) and sums (``s``, stored as ``<name>.sum``)
become readings; string and data values (``vs``, ``vd``) are not metrics and are skipped.
The metric is the record's ``n`` (or, for a record without one, its unit); the device is the
one the transport names, or else the base name without its trailing separator. LwM2M 1.1
packs (Send, notifications) name resources by path (``bn`` ``/3303/0/``, ``n`` ``5700``):
such a name is accepted and the whole path is the metric (``/3303/0/5700``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

import orjson

from core.frames import Decoded, FrameBatch, Reject
from decoders.base import Decoder, TableSpec
from decoders.limits import (
    MAX_TEXT,
    LimitError,
    check_text,
    json_depth_exceeds,
    not_finite,
    too_deep,
    too_long,
)
from decoders.rows import EnvReadingsBuilder
from decoders.tables import ENV_READINGS

# RFC 8428 §4.5.3: values of t below 2**28 are relative to the current time.
RELATIVE_TIME_LIMIT = 2**28
# RFC 8428 §4.5.1: a name starts with a letter or digit and uses only these characters;
# LwM2M 1.1 (Core §7.4.4) names resources by their path, which starts with "/".
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*\Z")
_LWM2M_PATH = re.compile(r"(/[0-9]{1,5}){1,4}\Z")
# An integer below int64 or above uint64 is a float to orjson, an int to json.loads. Such a
# JSON number has 19 digits or more and starts the text or follows "[", "," or ":" (white
# space and "-" between): with digits mapped to "0", those three, white space and "-" to ":",
# the rest to "x", it shows as ":" and 19 zeros, or 19 zeros at the start (text inside strings
# can only add false alarms).
_WIDE_INT_MAP = bytes(
    0x30 if 0x30 <= b <= 0x39 else 0x3A if b in b"[,: \t\r\n-" else 0x78 for b in range(256)
)
_WIDE_INT = b":" + b"0" * 19


def _may_hold_wide_int(payload: bytes) -> bool:
    t = payload.translate(_WIDE_INT_MAP)
    return _WIDE_INT in t or t.startswith(_WIDE_INT[1:])


MAX_TIME_S = 7_258_118_400  # 2200-01-01: anything later is a device clock error


class SenMLError(ValueError):
    """A pack that is valid JSON but not valid SenML."""


def _number(rec: dict[str, object], key: str, i: int) -> float | None:
    val = rec.get(key)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, int | float):
        raise SenMLError(f"record {i}: {key!r} must be a number")
    try:
        number = float(val)
    except OverflowError:
        raise SenMLError(f"record {i}: {key!r} is out of range") from None
    if not math.isfinite(number):  # JSON's NaN/Infinity tokens, CBOR's NaN and ±Inf
        raise LimitError(not_finite(f"record {i}: {key}", number))
    return number


def parse_pack(
    pack: object, received_s: float, device_hint: str
) -> list[tuple[str, str, float, float]]:
    """Resolve a SenML pack into (device, metric, time_s, value) tuples; raise SenMLError."""
    if not isinstance(pack, list):
        raise SenMLError("pack must be an array of records")
    if not pack:
        raise SenMLError("empty pack")
    out: list[tuple[str, str, float, float]] = []
    bn, bu, bt, bv, bs = "", "", 0.0, 0.0, 0.0
    for i, rec in enumerate(pack):
        if not isinstance(rec, dict):
            raise SenMLError(f"record {i}: must be a JSON object")
        if "bn" in rec:
            if not isinstance(rec["bn"], str):
                raise SenMLError(f"record {i}: 'bn' must be a string")
            bn = rec["bn"]
        bt = _number(rec, "bt", i) if "bt" in rec else bt  # type: ignore[assignment]
        bv = _number(rec, "bv", i) if "bv" in rec else bv  # type: ignore[assignment]
        bs = _number(rec, "bs", i) if "bs" in rec else bs  # type: ignore[assignment]
        if "bu" in rec:
            if not isinstance(rec["bu"], str):
                raise SenMLError(f"record {i}: 'bu' must be a string")
            bu = rec["bu"]
        unit = rec.get("u", bu)
        if not isinstance(unit, str):
            raise SenMLError(f"record {i}: 'u' must be a string")
        if not unit.isascii() or "\0" in unit:  # it may become the metric (a TEXT column)
            check_text(f"record {i}: u", unit)
        n = rec.get("n", "")
        if not isinstance(n, str):
            raise SenMLError(f"record {i}: 'n' must be a string")
        if len(bn) + len(n) > MAX_TEXT or len(unit) > MAX_TEXT:  # before concatenating
            long = ("name", len(bn) + len(n)) if len(bn) + len(n) > MAX_TEXT else ("u", len(unit))
            raise LimitError(too_long(f"record {i}: {long[0]}", long[1]))
        name = bn + n
        lwm2m = _LWM2M_PATH.match(name) is not None
        if not lwm2m and not _NAME_RE.match(name):
            raise SenMLError(f"record {i}: invalid name {name!r}")
        t = _number(rec, "t", i) or 0.0
        time_s = bt + t
        if time_s < RELATIVE_TIME_LIMIT:
            time_s += received_s
        if not 0 <= time_s < MAX_TIME_S:
            raise SenMLError(f"record {i}: time {time_s!r} out of range")
        device = device_hint or bn.rstrip(":/.-_")
        if not device:
            raise SenMLError(f"record {i}: no device (no topic device id and no 'bn')")
        # A record without a name measures the base name's sensor; its unit (RFC 8428 §12.1
        # registry: "%RH", "lon", "lat", …) is then what tells its values apart.
        metric = name if lwm2m else n or unit or "value"
        v = _number(rec, "v", i)
        vb = rec.get("vb")
        s = _number(rec, "s", i)
        if v is not None:
            value = bv + v
        elif isinstance(vb, bool):
            value = float(vb)
        elif "vb" in rec:
            raise SenMLError(f"record {i}: 'vb' must be a boolean")
        else:
            value = math.nan  # a record with only vs/vd/s: no plain value
        if not math.isnan(value):
            if not math.isfinite(value):
                raise SenMLError(f"record {i}: value must be finite")
            out.append((device, metric, time_s, value))
        if s is not None:
            if not math.isfinite(bs + s):
                raise SenMLError(f"record {i}: sum must be finite")
            out.append((device, metric + ".sum", time_s, bs + s))
    return out


class PackError(ValueError):
    """A payload that is not a well-formed pack in its serialisation (reason included)."""


def decode_packs(batch: FrameBatch, load: Callable[[bytes], object]) -> Decoded:
    """Decode one SenML pack per frame with ``load`` (JSON or CBOR) into env_readings.

    ``load`` raises ``PackError`` with the reject reason for a payload it cannot read; a bad
    pack is rejected whole and its neighbours are kept.
    """
    rows = EnvReadingsBuilder()
    rejects: list[Reject] = []
    for i, payload in enumerate(batch.payloads):
        try:
            pack = load(payload)
            readings = parse_pack(pack, batch.received_us[i] / 1e6, batch.device_hints[i])
        except PackError as exc:
            rejects.append(Reject(i, str(exc)))
            continue
        except SenMLError as exc:
            rejects.append(Reject(i, f"senml_invalid: {exc}"))
            continue
        except LimitError as exc:
            rejects.append(Reject(i, str(exc)))
            continue
        for device, metric, time_s, value in readings:
            rows.add(round(time_s * 1e6), device.encode(), metric.encode(), value, i)
    out = Decoded(rejects=rejects, frames_ok=len(batch) - len(rejects))
    out.rows[ENV_READINGS.name] = rows.build()
    return out


def load_json(payload: bytes, what: str) -> object:
    """A JSON document, or ``PackError`` with the reject reason; depth is checked first
    (``json.loads`` recurses once per level). orjson parses what it accepts (a subset of what
    ``json.loads`` accepts, to the same values); anything else goes to ``json.loads``, so the
    documents accepted and the reasons given are the standard parser's."""
    if json_depth_exceeds(payload):
        raise PackError(too_deep(what))
    if not _may_hold_wide_int(payload):  # orjson would make integers past 64 bits floats
        try:
            return orjson.loads(payload)  # strict RFC 8259 and UTF-8, in Rust: the usual frame
        except orjson.JSONDecodeError:
            pass  # NaN, ±Infinity, or not JSON: the standard parser decides, and says why
    try:
        doc = json.loads(payload.decode("utf-8"))  # RFC 8428 §6: UTF-8 only
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackError(f"json_invalid: {exc}") from None
    except ValueError as exc:  # an integer over Python's 4300-digit conversion limit
        raise PackError(f"json_invalid: {str(exc).split(';')[0]}") from None
    except RecursionError:  # not reached after the depth check; kept as the last line
        raise PackError(too_deep(what)) from None
    return doc


def _load_json(payload: bytes) -> object:
    return load_json(payload, "pack")


class SenMLJsonDecoder:
    """Decoder for SenML JSON packs, one pack per frame."""

    name = "senml-json"
    content_formats: tuple[int, ...] = (110,)
    tables: tuple[TableSpec, ...] = (ENV_READINGS,)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Parse every pack; a bad pack is rejected whole, its neighbours are kept."""
        return decode_packs(batch, _load_json)


DECODER: Decoder = SenMLJsonDecoder()
