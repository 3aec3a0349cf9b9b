"""Replaying a recording (or the HJ 212 corpus) into cityflux, with the same accounting.

What each frame should become is worked out before sending, by cityflux's own decoders run
locally (the oracle): a frame with rows must be stored under its storage key (table, device,
device time; the CN for HJ 212) — once: a later frame with the same key is a duplicate —, a
frame the decoder rejects must come back as a dead letter
with the same payload, a frame without rows (heartbeats, replies) is only acknowledged.
Frames whose time is the receive time (plain values, SenML without a time) cannot be matched
by key and are counted as ``unverifiable``. The frames then go out over MQTT or CoAP at N×
the recorded pace or as fast as possible, and ``accounting.account`` compares.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.frames import FrameBatch
from decoders.registry import DecoderRegistry, UnknownDecoderError
from ingest.topics import UplinkTopic, parse_uplink
from simulators.coap_client import CoapSender
from simulators.models.base import content_format
from simulators.mqtt_publisher import BulkPublisher, PahoPublisher, connect_publisher
from simulators.recording import Record
from simulators.run import DUPLICATE, MALFORMED, VALID, Ledger, Progress, Target, digest, tag

OTHER = 3  # frames without a storage key: no rows (heartbeats) or receive-time rows
RECEIVE_TIME_LIMIT_US = 10**12  # rows "from 1970-01-12" came from the oracle's receive time 0
ORACLE_BATCH = 5_000


@dataclass(slots=True)
class Planned:
    """A frame to send, with the ledger tag its outcome is counted under."""

    time_us: int
    transport: str
    source: str
    payload: bytes
    tag: int


@dataclass
class Plan:
    """The frames in order, the groups (decoder → table) and the ledger with their keys."""

    frames: list[Planned] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    ids: list[list[str]] = field(default_factory=list)
    ledger: Ledger = field(default_factory=lambda: Ledger([], []))
    unverifiable: int = 0
    no_rows: int = 0
    kinds: dict[str, tuple[str, str]] = field(default_factory=dict)  # device -> (kind, decoder)


def _source_levels(rec: Record, decoders: DecoderRegistry) -> tuple[str, str, str]:
    """(kind, device, decoder) a recorded frame names."""
    if rec.transport == "coap":
        parts = [p for p in rec.source.split("/") if p]
        if len(parts) >= 4 and parts[3] in decoders:
            return parts[1], parts[2], parts[3]
        return (parts[1], parts[2], "") if len(parts) >= 3 else ("", "", "")
    up = parse_uplink(rec.source)
    return (up.kind, up.device, up.format) if isinstance(up, UplinkTopic) else ("", "", "")


def plan(records: Iterable[Record], decoders: DecoderRegistry, confirmed: bool) -> Plan:
    """Decode every frame locally and decide what it must become."""
    p = Plan()
    group_of: dict[tuple[str, str], int] = {}
    index_of: list[dict[str, int]] = []
    pending: dict[str, list[int]] = {}
    seen: list[set[tuple[int, int, int]]] = []  # per group: the keys already planned

    def group(decoder: str, table: str) -> int:
        key = (decoder, table)
        if key not in group_of:
            group_of[key] = len(p.groups)
            p.groups.append(f"{decoder}->{table}")
            p.tables.append(table)
            p.ids.append([])
            index_of.append({})
            seen.append(set())
            p.ledger.groups.append(p.groups[-1])
            p.ledger.confirmed.append(confirmed)
        return group_of[key]

    def flush(name: str) -> None:
        idx = pending.pop(name, [])
        if not idx:
            return
        dec = decoders.get(name)
        batch = FrameBatch(name, "replay")
        for i in idx:
            f = p.frames[i]
            _, device, _ = _source_levels(Record(0, f.transport, f.source, b""), decoders)
            batch.append(f.payload, f.source, device, "", 0)
        out = dec.decode_batch(batch)
        rejected = {r.index for r in out.rejects}
        keyed: set[int] = set()
        for table in [t.name for t in dec.tables]:
            rows = out.rows.get(table)
            if rows is None or not len(rows):
                continue
            times = np.asarray(rows.columns["time"], dtype=np.int64)
            order = np.lexsort((times, rows.frame_index))
            fi, t, devs = rows.frame_index[order], times[order], rows.devices[order]
            first = np.flatnonzero(np.r_[True, fi[1:] != fi[:-1]])
            variants = (
                np.asarray(rows.columns["cn"], dtype=np.int64)[order][first]
                if table == "hj212_readings"
                else np.zeros(first.shape[0], dtype=np.int64)
            )
            g = group(name, table)
            key_dev, key_t, key_v = [], [], []
            for j, k in enumerate(first.tolist()):
                frame = int(fi[k])
                if frame in keyed or frame in rejected:
                    continue
                keyed.add(frame)
                if int(t[k]) < RECEIVE_TIME_LIMIT_US:
                    p.unverifiable += 1
                    p.frames[idx[frame]].tag = tag(g, OTHER)
                    continue
                ext = devs[k].decode()
                d = index_of[g].setdefault(ext, len(p.ids[g]))
                if d == len(p.ids[g]):
                    p.ids[g].append(ext)
                key = (d, int(t[k]), int(variants[j]))
                if key in seen[g]:  # the same frame again: stored once, counted as such
                    p.frames[idx[frame]].tag = tag(g, DUPLICATE)
                    continue
                seen[g].add(key)
                key_dev.append(d)
                key_t.append(key[1])
                key_v.append(key[2])
                p.frames[idx[frame]].tag = tag(g, VALID)
            p.ledger.note_keys(
                g,
                np.asarray(key_dev, dtype=np.int64),
                np.asarray(key_t, dtype=np.int64),
                np.asarray(key_v, dtype=np.int64),
            )
        fallback = group(name, dec.tables[0].name)
        for frame, i in enumerate(idx):
            f = p.frames[i]
            if frame in rejected:
                f.tag = tag(fallback, MALFORMED)
                p.ledger.malformed_digests[digest(f.payload)] += 1
                _, device, _ = _source_levels(Record(0, f.transport, f.source, b""), decoders)
                if device:  # dead letters are found by the device the transport named
                    d = index_of[fallback].setdefault(device, len(p.ids[fallback]))
                    if d == len(p.ids[fallback]):
                        p.ids[fallback].append(device)
            elif frame not in keyed:
                f.tag = tag(fallback, OTHER)
                p.no_rows += 1

    for rec in records:
        kind, device, name = _source_levels(rec, decoders)
        i = len(p.frames)
        p.frames.append(Planned(rec.time_us, rec.transport, rec.source, rec.payload, -1))
        try:
            decoders.get(name)
        except UnknownDecoderError:
            g = group(name or "unknown", "dead_letters")
            p.frames[i].tag = tag(g, MALFORMED)
            p.ledger.malformed_digests[digest(rec.payload)] += 1
            continue
        if device:
            p.kinds.setdefault(device, (kind, name))
        pending.setdefault(name, []).append(i)
        if len(pending[name]) >= ORACLE_BATCH:
            flush(name)
    for name in list(pending):
        flush(name)
    return p


def _convert(f: Planned, transport: str, prefix: str) -> tuple[str, str]:
    """(transport, topic or path) to send a frame on."""
    if transport in ("", f.transport):
        return f.transport, f.source
    if transport == "coap":  # <prefix>/up/... -> /up/...
        at = f.source.find("/up/")
        return "coap", f.source[at:] if at >= 0 else "/up/" + f.source
    return "mqtt", prefix + f.source if f.source.startswith("/up/") else f.source


def send(
    p: Plan,
    target: Target,
    *,
    speed: float | None,
    transport: str = "",
    qos: int = 1,
    confirmable: bool = True,
    prefix: str = "cityflux",
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    drain_timeout_s: float = 120.0,
) -> Ledger:
    """Send the planned frames at ``speed``× their recorded pace (None: as fast as possible)."""
    led = p.ledger
    pub: BulkPublisher | PahoPublisher | None = None
    coap: CoapSender | None = None
    wall0 = led.started = time.monotonic()
    t0 = p.frames[0].time_us if p.frames else 0
    span_s = (p.frames[-1].time_us - t0) / 1e6 if p.frames else 0.0
    last = 0.0
    try:
        for n, f in enumerate(p.frames):
            if should_stop():
                led.stopped_early = True
                break
            if speed:
                wait = (f.time_us - t0) / 1e6 / speed - (time.monotonic() - wall0)
                if wait > 0:
                    time.sleep(wait)
            how, where = _convert(f, transport, prefix)
            if how == "coap":
                if coap is None:
                    coap = CoapSender(
                        target.coap_host,
                        target.coap_port,
                        con=confirmable,
                        window=target.coap_window,
                    )
                fmt = where.rstrip("/").split("/")[4] if where.count("/") >= 4 else ""
                coap.send(where, content_format(fmt), f.payload, f.tag)
            else:
                if pub is None:
                    pub = connect_publisher(
                        target.mqtt_host,
                        target.mqtt_port,
                        f"cityflux-replay-{time.time_ns() % 10**9}",
                        qos=qos,
                        v5=target.mqtt_v5,
                        username=target.mqtt_username,
                        password=target.mqtt_password,
                        tls=target.mqtt_tls,
                    )
                pub.publish(where, f.payload, f.tag)
            led.sent[f.tag] += 1
            now = time.monotonic()
            if on_progress and now - last > 0.25:
                last = now
                on_progress(
                    Progress(
                        (f.time_us - t0) / 1e6,
                        span_s,
                        n + 1,
                        _acked(pub, coap, confirmable, qos),
                        (n + 1) / (now - wall0),
                    )
                )
        deadline = time.monotonic() + drain_timeout_s
        if pub is not None:
            pub.drain(drain_timeout_s)
        if coap is not None:
            coap.drain(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        led.stopped_early = True
    finally:
        led.acked = _acked_by_tag(pub, coap, confirmable, qos)
        if coap is not None:
            led.deferred = sum(coap.deferred.values())
            for codes in coap.answers.values():
                led.answers.update(codes)
            coap.close()
        if pub is not None:
            pub.close()
        led.wall_s = time.monotonic() - wall0
    return led


def _acked_by_tag(
    pub: BulkPublisher | PahoPublisher | None, coap: CoapSender | None, con: bool, qos: int
) -> Any:
    from collections import Counter

    acked: Counter[int] = Counter()
    if pub is not None and qos:
        acked.update(pub.acked)
    if coap is not None and con:
        for t, codes in coap.answers.items():
            acked[t] += sum(codes.values())
    return acked


def _acked(
    pub: BulkPublisher | PahoPublisher | None, coap: CoapSender | None, con: bool, qos: int
) -> int:
    return sum(_acked_by_tag(pub, coap, con, qos).values())
