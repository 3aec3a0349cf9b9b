"""Plain values: one reading per frame, the metric named by the topic, into env_readings.

The simplest telemetry there is, and the most common on MQTT: ESPHome and Home Assistant
state topics, the Homie convention and Telegraf's ``value`` data format all publish a bare
number (``21.5``) or a binary state (``ON``/``OFF``) on a topic that names the sensor.
cityflux takes it on ``<prefix>/up/<kind>/<device>/value/<metric>`` (CoAP:
``/up/<kind>/<device>/value/<metric>``); the payload carries no time, so the reading's time
is the frame's receive time.

A payload is a number as Python's ``float`` reads it (ASCII, surrounding whitespace allowed,
finite), or ``ON``/``OFF``/``true``/``false`` in any case (1 or 0). A whole batch of numbers
converts with one numpy ``astype``; a batch holding anything else falls back to the same rules
frame by frame (property-tested against each other in tests/unit/test_value.py).
"""

from __future__ import annotations

import math
import re

import numpy as np

from core.frames import Decoded, FrameBatch, Reject, TableRows
from decoders.base import Decoder, TableSpec
from decoders.limits import MAX_TEXT
from decoders.rows import EnvReadingsBuilder
from decoders.tables import ENV_READINGS

MAX_PAYLOAD = 64  # bytes; a longer payload is not a plain value
_STATES = {b"on": 1.0, b"off": 0.0, b"true": 1.0, b"false": 0.0}
# The metric level follows SenML's name rule (RFC 8428 §4.5.1) without '/': one topic level.
_METRIC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]*\Z")
_MARK = "/value/"


class PlainValueError(ValueError):
    """A payload that is not a plain value (message is the reject reason)."""


def parse_value(payload: bytes) -> float:
    """The reading a plain-value payload carries; raise ``PlainValueError`` with the reason."""
    if len(payload) > MAX_PAYLOAD:
        raise PlainValueError(f"value_invalid: payload longer than {MAX_PAYLOAD} bytes")
    if b"\x00" in payload:
        raise PlainValueError("value_invalid: NUL byte in payload")
    state = _STATES.get(payload.strip().lower())
    if state is not None:
        return state
    try:
        value = float(payload)
    except ValueError:
        raise PlainValueError(f"value_invalid: not a number: {payload[:20]!r}") from None
    if not math.isfinite(value):
        raise PlainValueError("value_invalid: value must be finite")
    return value


def metric_of(source: str) -> str:
    """The metric a source names (``…/value/<metric>``); raise ``PlainValueError``."""
    at = source.rfind(_MARK)
    metric = source[at + len(_MARK) :] if at >= 0 else ""
    if len(metric) > MAX_TEXT:  # a topic level can be 64 KiB; a btree key row cannot
        raise PlainValueError(f"too_long: metric has {len(metric)} characters, max {MAX_TEXT}")
    if not _METRIC_RE.match(metric):
        raise PlainValueError(
            f"value_invalid: the topic or path names no metric (…/value/<metric>): {source!r}"
        )
    return metric


def _vectorised(payloads: list[bytes]) -> np.ndarray | None:
    """Every payload as a float with one numpy conversion, or None when any is not a plain
    finite number (the caller then applies ``parse_value`` per frame)."""
    arr = np.array(payloads, dtype=f"S{MAX_PAYLOAD}")
    lengths = np.fromiter(map(len, payloads), np.int64, len(payloads))
    # 'S' arrays drop trailing NULs and truncate long payloads: both must go the slow way
    if (lengths != np.char.str_len(arr)).any():
        return None
    try:
        values = arr.astype(np.float64)
    except ValueError:
        return None
    return values if np.isfinite(values).all() else None


class ValueDecoder:
    """Decoder for plain-value payloads (one number or ON/OFF per frame)."""

    name = "value"
    content_formats: tuple[int, ...] = ()  # text/plain (0) stays HJ 212's on CoAP
    tables: tuple[TableSpec, ...] = (ENV_READINGS,)

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """One reading per frame; a bad payload or a source without a metric is rejected."""
        n = len(batch)
        if n == 0:
            empty = Decoded(rejects=[], frames_ok=0)
            empty.rows[ENV_READINGS.name] = EnvReadingsBuilder().build()
            return empty
        rejects: list[Reject] = []
        keep = np.ones(n, dtype=np.bool_)
        values = _vectorised(batch.payloads)
        if values is None:
            values = np.zeros(n, dtype=np.float64)
            for i, payload in enumerate(batch.payloads):
                try:
                    values[i] = parse_value(payload)
                except PlainValueError as exc:
                    rejects.append(Reject(i, str(exc)))
                    keep[i] = False
        # a topic per (device, metric): each distinct source parsed once
        metrics: dict[str, bytes | str] = {}
        for source in set(batch.sources):
            try:
                metrics[source] = metric_of(source).encode()
            except PlainValueError as exc:
                metrics[source] = str(exc)  # the reject reason
        metric_col: list[bytes] = []
        for i, source in enumerate(batch.sources):
            m = metrics[source]
            if isinstance(m, str):
                if keep[i]:
                    rejects.append(Reject(i, m))
                    keep[i] = False
                m = b""
            metric_col.append(m)
        devices = np.array([h.encode() for h in batch.device_hints], dtype=np.bytes_)
        no_device = np.char.str_len(devices) == 0
        rejects += [
            Reject(j, "value_invalid: no device (the topic names it)")
            for j in np.flatnonzero(no_device & keep).tolist()
        ]
        keep &= ~no_device
        idx = np.flatnonzero(keep)
        rows = TableRows(
            table=ENV_READINGS.name,
            columns={
                "time": np.array(batch.received_us, dtype=np.int64)[idx],
                "metric": np.array(metric_col, dtype=np.bytes_)[idx],
                "value": values[idx],
            },
            devices=devices[idx],
            frame_index=idx.astype(np.int32),
        )
        rejects.sort(key=lambda r: r.index)
        out = Decoded(rejects=rejects, frames_ok=n - len(rejects))
        out.rows[ENV_READINGS.name] = rows
        return out


DECODER: Decoder = ValueDecoder()
