"""Running a scenario: frames out on time, faults injected, everything sent written down.

The loop advances device time in windows (real time × ``speed``, or as fast as the
transports take frames with ``speed: max``), asks each group's model for the frames due,
applies the faults, and hands the frames to the group's transport (one MQTT 5 connection per
QoS, one CoAP sender per message type; many devices share them, as behind a gateway). The
``Ledger`` keeps what the accounting needs: per group and category, frames sent and
acknowledged; the storage key of every well-formed frame sent; the digest of every frame
corrupted on purpose.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from core.mqtt import MqttConfig
from simulators.coap_client import CoapSender
from simulators.keyed import stream_id, uniform
from simulators.models import MODELS, DeviceModel, Frames
from simulators.models.base import content_format
from simulators.mqtt_publisher import BulkPublisher, PahoPublisher, connect_publisher
from simulators.recording import RecordWriter
from simulators.scenario import Scenario, Transport

VALID, MALFORMED, DUPLICATE = 0, 1, 2  # categories of a frame sent (the tag's low bits)
CATEGORIES = ("valid", "malformed", "duplicate")
I64 = npt.NDArray[np.int64]


def tag(group: int, category: int) -> int:
    """The counter key of a group's frames of one category."""
    return group * 4 + category


@dataclass(frozen=True, slots=True)
class Target:
    """Where the frames go."""

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_v5: bool = True  # False for MQTT 3.1.1 brokers (the embedded amqtt fallback)
    mqtt_tls: MqttConfig | None = None  # the broker settings, when they ask for TLS
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683
    coap_window: int = 1000


@dataclass
class Ledger:
    """What was sent: counts, the keys of well-formed frames, digests of corrupted ones."""

    groups: list[str]
    confirmed: list[bool]  # QoS 1 / CON: acknowledgements mean something
    sent: Counter[int] = field(default_factory=Counter)
    acked: Counter[int] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)  # CoAP final answers by code
    deferred: int = 0  # CoAP 5.03 answers (sent again after Max-Age)
    late: int = 0
    dropped: int = 0
    offline_devices: int = 0
    malformed_digests: Counter[str] = field(default_factory=Counter)  # MD5 hex -> copies
    _keys: list[tuple[int, I64, I64, I64]] = field(default_factory=list)  # group, dev, t, var
    _drops: list[tuple[int, I64, I64, I64]] = field(default_factory=list)  # group, dev, seq, var
    _arrive: list[tuple[int, I64, I64, I64]] = field(default_factory=list)  # well-formed sent
    first_time_us: int | None = None
    last_time_us: int | None = None
    wall_s: float = 0.0
    started: float = field(default_factory=time.monotonic)  # monotonic, first frame
    stopped_early: bool = False

    def note_valid(self, group: int, fr: Frames, keep: npt.NDArray[np.bool_]) -> None:
        """Remember the storage keys of well-formed frames."""
        var = fr.variants if fr.variants is not None else np.zeros(len(fr), dtype=np.int64)
        self.note_keys(group, fr.devices[keep], fr.times_us[keep], var[keep])

    def note_keys(self, group: int, devices: I64, times_us: I64, variants: I64) -> None:
        """Remember storage keys: (device index in the group, device time, variant)."""
        if not devices.shape[0]:
            return
        self._keys.append((group, devices, times_us, variants))
        lo, hi = int(times_us.min()), int(times_us.max())
        self.first_time_us = lo if self.first_time_us is None else min(self.first_time_us, lo)
        self.last_time_us = hi if self.last_time_us is None else max(self.last_time_us, hi)

    def note_numbers(
        self, group: int, fr: Frames, dropped: npt.NDArray[np.bool_], arrive: npt.NDArray[np.bool_]
    ) -> None:
        """Remember the counters of frames dropped and of well-formed frames sent."""
        var = fr.variants if fr.variants is not None else np.zeros(len(fr), dtype=np.int64)
        if dropped.any():
            self._drops.append((group, fr.devices[dropped], fr.seqs[dropped], var[dropped]))
        self._arrive.append((group, fr.devices[arrive], fr.seqs[arrive], var[arrive]))

    def drops_between(self) -> dict[tuple[int, int, int], int]:
        """Frames dropped per (group, device, variant) between the first and the last
        well-formed frame of that device and variant that was sent: the frames a loss detector
        can see missing (nothing tells it of drops before a device's first frame or after its
        last)."""
        if not self._drops:
            return {}
        span: dict[tuple[int, int, int], tuple[int, int]] = {}
        for g, dev, seq, var in self._arrive:
            for d, s, v in zip(dev.tolist(), seq.tolist(), var.tolist(), strict=True):
                lo, hi = span.get((g, d, v), (s, s))
                span[(g, d, v)] = (min(lo, s), max(hi, s))
        out: Counter[tuple[int, int, int]] = Counter()
        for g, dev, seq, var in self._drops:
            for d, s, v in zip(dev.tolist(), seq.tolist(), var.tolist(), strict=True):
                lo, hi = span.get((g, d, v), (s, s))
                if lo < s < hi:
                    out[(g, d, v)] += 1
        return dict(out)

    def keys(self) -> tuple[I64, I64, I64, I64]:
        """Every well-formed frame's (group, device, time µs, variant); distinct by
        construction (a duplicate or late frame is noted once)."""
        if not self._keys:
            e = np.empty(0, dtype=np.int64)
            return e, e, e, e
        g = np.concatenate(
            [np.full(d.shape[0], grp, dtype=np.int64) for grp, d, _, _ in self._keys]
        )
        d = np.concatenate([k[1] for k in self._keys])
        t = np.concatenate([k[2] for k in self._keys])
        v = np.concatenate([k[3] for k in self._keys])
        return g, d, t, v

    def total(self, counter: Counter[int], category: int | None = None) -> int:
        """Sum over groups of one category (or all)."""
        return sum(n for k, n in counter.items() if category is None or k % 4 == category)


@dataclass
class Progress:
    """What the progress bar shows."""

    sim_s: float
    duration_s: float
    sent: int
    acked: int
    rate_per_s: float


def digest(payload: bytes) -> str:
    """What dead letters are matched by: PostgreSQL's ``md5()`` of the payload."""
    return hashlib.md5(payload, usedforsecurity=False).hexdigest()


def _corrupt(payload: bytes) -> bytes:
    """A frame no decoder accepts: cut in half (length fields, CRCs and JSON all break)."""
    return payload[: len(payload) // 2]


class FleetRun:
    """One run of a scenario against a target."""

    def __init__(
        self,
        scenario: Scenario,
        target: Target,
        *,
        start_us: int | None = None,
        record: RecordWriter | None = None,
    ) -> None:
        self.scenario, self.target, self.record = scenario, target, record
        self._fixed_start = start_us is not None or scenario.start != "now"
        self.models: list[DeviceModel] = []
        self._build(start_us if start_us is not None else scenario.start_us())
        self.kinds = [g.kind or m.kind for g, m in zip(scenario.groups, self.models, strict=True)]
        self.ids = [m.external_ids() for m in self.models]
        self.ledger = Ledger(
            [g.name for g in scenario.groups],
            [
                (g.transport is Transport.MQTT and g.qos == 1)
                or (g.transport is Transport.COAP and g.confirmable)
                for g in scenario.groups
            ],
        )
        self._mqtt: dict[int, BulkPublisher | PahoPublisher] = {}
        self._coap: dict[bool, CoapSender] = {}
        self._late: list[tuple[int, int, int, str, bytes]] = []  # (due, n, group, device, frame)
        self._late_n = 0
        self._offline = self._offline_masks()
        self.sent_until_us = 0
        """Relative device time up to which frames were sent (the run's end, or where it
        stopped)."""

    def _build(self, start_us: int) -> None:
        """The groups' models for a device-time origin."""
        self.start_us = start_us
        self.models = []
        for g, ctx in zip(self.scenario.groups, self.scenario.contexts(start_us), strict=True):
            cls = MODELS[g.model]
            self.models.append(cls(ctx, cls.options.model_validate(g.options)))  # type: ignore[call-arg]

    # -- faults ----------------------------------------------------------------------------
    def _offline_masks(self) -> list[npt.NDArray[np.bool_]]:
        f, seed = self.scenario.faults, self.scenario.seed
        out = []
        for gi, m in enumerate(self.models):
            n = m.ctx.count
            mask = uniform(seed, stream_id(f"fault.offline:{gi}"), np.arange(n)) < f.offline
            out.append(mask)
            self.ledger.offline_devices += int(mask.sum())
        return out

    def _silent(self, gi: int, fr: Frames) -> npt.NDArray[np.bool_]:
        f = self.scenario.faults
        if not f.offline:
            return np.zeros(len(fr), dtype=np.bool_)
        rel = fr.times_us - self.start_us
        lo = f.offline_after_s * 1e6
        hi = lo + f.offline_for_s * 1e6 if f.offline_for_s else np.inf
        return np.asarray(self._offline[gi][fr.devices] & (rel >= lo) & (rel < hi))

    # -- transports ------------------------------------------------------------------------
    def _send(self, gi: int, device: str, payload: bytes, category: int) -> None:
        g, m = self.scenario.groups[gi], self.models[gi]
        kind, fmt = self.kinds[gi], m.format
        t = tag(gi, category)
        if g.transport is Transport.MQTT:
            pub = self._mqtt.get(g.qos)
            if pub is None:
                tg = self.target
                pub = self._mqtt[g.qos] = connect_publisher(
                    tg.mqtt_host,
                    tg.mqtt_port,
                    f"cityflux-sim-{self.scenario.seed}-q{g.qos}-{time.time_ns() % 10**9}",
                    qos=g.qos,
                    v5=tg.mqtt_v5,
                    username=tg.mqtt_username,
                    password=tg.mqtt_password,
                    tls=tg.mqtt_tls,
                )
            topic = f"{self.scenario.prefix}/up/{kind}/{device}/{fmt}"
            pub.publish(topic, payload, t)
            source = topic
        else:
            sender = self._coap.get(g.confirmable)
            if sender is None:
                tg = self.target
                sender = self._coap[g.confirmable] = CoapSender(
                    tg.coap_host, tg.coap_port, con=g.confirmable, window=tg.coap_window
                )
            source = f"/up/{kind}/{device}/{fmt}"
            sender.send(source, content_format(fmt), payload, t)
        self.ledger.sent[t] += 1
        if self.record is not None:
            self.record.write(time.time_ns() // 1000, g.transport.value, source, payload)

    def _poll(self) -> None:
        for pub in self._mqtt.values():
            pub.poll()
        for sender in self._coap.values():
            sender.poll(0)

    # -- the loop --------------------------------------------------------------------------
    def _window(self, a_us: int, b_us: int) -> None:
        """Send the frames with device times in (a, b] after the start, faults applied."""
        f, seed = self.scenario.faults, self.scenario.seed
        for gi, m in enumerate(self.models):
            fr = m.frames(a_us, b_us)
            if not len(fr):
                continue
            keep = ~self._silent(gi, fr)
            var = fr.variants if fr.variants is not None else np.zeros(len(fr), dtype=np.int64)
            keys = (fr.devices, fr.seqs, var)
            if f.drop:  # never sent; the device's counter has moved on all the same
                drop = keep & (uniform(seed, stream_id(f"fault.drop:{gi}"), *keys) < f.drop)
                keep &= ~drop
                self.ledger.dropped += int(drop.sum())
            else:
                drop = np.zeros(len(fr), dtype=np.bool_)
            bad = keep & (uniform(seed, stream_id(f"fault.malformed:{gi}"), *keys) < f.malformed)
            late = keep & ~bad & (uniform(seed, stream_id(f"fault.late:{gi}"), *keys) < f.late)
            dup = keep & ~bad & (uniform(seed, stream_id(f"fault.dup:{gi}"), *keys) < f.duplicates)
            self.ledger.note_valid(gi, fr, keep & ~bad)
            if f.drop:  # what drops_between needs (only kept when frames are dropped)
                self.ledger.note_numbers(gi, fr, drop, keep & ~bad)
            ids = self.ids[gi]
            due_late = self.start_us + b_us + round(f.late_s * 1e6)
            flags = zip(keep.tolist(), bad.tolist(), late.tolist(), dup.tolist(), strict=True)
            for i, (k, is_bad, is_late, is_dup) in enumerate(flags):
                if not k:
                    continue
                device, payload = ids[int(fr.devices[i])], fr.payloads[i]
                if is_bad:
                    payload = _corrupt(payload)
                    self.ledger.malformed_digests[digest(payload)] += 1
                    self._send(gi, device, payload, MALFORMED)
                elif is_late:
                    self._late_n += 1
                    heapq.heappush(self._late, (due_late, self._late_n, gi, device, payload))
                    self.ledger.late += 1
                else:
                    self._send(gi, device, payload, VALID)
                    if is_dup:
                        self._send(gi, device, payload, DUPLICATE)

    def _release_late(self, until_us: int | None) -> None:
        while self._late and (until_us is None or self._late[0][0] <= until_us):
            _, _, gi, device, payload = heapq.heappop(self._late)
            self._send(gi, device, payload, VALID)

    def run(
        self,
        on_progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        drain_timeout_s: float = 120.0,
    ) -> Ledger:
        """Run to the end (or until ``should_stop``, or Ctrl-C); wait for acknowledgements."""
        sc = self.scenario
        end_us = round(sc.duration_s * 1e6)
        realtime = sc.speed != "max"
        speed = float(sc.speed) if realtime else 0.0
        cap = sc.rate_cap_per_s
        if realtime and not self._fixed_start:  # device time is the wall clock: start on it
            if self.start_us / 1e6 < time.time() + 0.05:  # built a while ago: start afresh
                self._build(sc.start_us())
            time.sleep(max(0.0, self.start_us / 1e6 - time.time()))
        wall0 = time.monotonic() - max(0.0, time.time() - self.start_us / 1e6) * (sc.start == "now")
        sim = 0
        last_report = 0.0
        try:
            while sim < end_us and not should_stop():
                now = time.monotonic()
                if realtime:
                    target = min(end_us, int((now - wall0) * speed * 1e6))
                    if target - sim < 20_000 * speed and target < end_us:  # ticks of 20 ms
                        self._poll()
                        time.sleep(0.005)
                        continue
                else:
                    target = min(end_us, sim + 1_000_000)
                if cap:  # never ahead of the cap: wait before sending the next window
                    while self.ledger.total(self.ledger.sent) > (time.monotonic() - wall0) * cap:
                        self._poll()
                        time.sleep(0.002)
                self._window(sim, target)
                self._release_late(self.start_us + target)
                self._poll()
                sim = self.sent_until_us = target
                if on_progress and now - last_report > 0.25:
                    last_report = now
                    on_progress(self._progress(sim, now - wall0))
        except KeyboardInterrupt:
            self.ledger.stopped_early = True
        if sim < end_us:
            self.ledger.stopped_early = True
        try:
            self._release_late(None)  # what is still held back goes now, late as it is
            self._drain(drain_timeout_s)
        except KeyboardInterrupt:
            self.ledger.stopped_early = True
        finally:
            self._collect()
            self.ledger.wall_s = time.monotonic() - wall0
            if on_progress:
                on_progress(self._progress(sim, self.ledger.wall_s))
            self.close()
        return self.ledger

    def _progress(self, sim_us: int, wall_s: float) -> Progress:
        self._collect()
        sent = self.ledger.total(self.ledger.sent)
        return Progress(
            sim_us / 1e6,
            self.scenario.duration_s,
            sent,
            self.ledger.total(self.ledger.acked),
            sent / wall_s if wall_s else 0.0,
        )

    def _drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for pub in self._mqtt.values():
            pub.drain(max(0.0, deadline - time.monotonic()))
        for sender in self._coap.values():
            sender.drain(max(0.0, deadline - time.monotonic()))

    def _collect(self) -> None:
        """Acknowledgements so far, by tag: PUBACKs (QoS 1; QoS 0 counts as sent) and CoAP
        final answers (CON; NON requests are not acknowledged)."""
        acked: Counter[int] = Counter()
        answers: Counter[str] = Counter()
        deferred = 0
        for qos, pub in self._mqtt.items():
            acked.update(pub.acked if qos else Counter())
        for con, sender in self._coap.items():
            deferred += sum(sender.deferred.values())
            for t, codes in sender.answers.items():
                answers.update(codes)
                if con:
                    acked[t] += sum(codes.values())
        self.ledger.acked, self.ledger.answers, self.ledger.deferred = acked, answers, deferred

    def close(self) -> None:
        """Close every connection."""
        for pub in self._mqtt.values():
            pub.close()
        for sender in self._coap.values():
            sender.close()
        self._mqtt.clear()
        self._coap.clear()

    def parking_lots(self) -> list[dict[str, Any]] | None:
        """What the parking groups' lots hold where the run ended (debounced as the service
        sees it: ``ParkingSpace.lots_at``); None without parking groups."""
        lots: list[dict[str, Any]] = []
        found = False
        for model in self.models:
            at = getattr(model, "lots_at", None)
            if at is not None:
                found = True
                lots += at(self.sent_until_us)
        return lots if found else None

    def describe(self) -> dict[str, Any]:
        """The fleet in numbers."""
        return {
            "devices": sum(m.ctx.count for m in self.models),
            "groups": {
                g.name: {"model": g.model, "count": g.count, "format": m.format}
                for g, m in zip(self.scenario.groups, self.models, strict=True)
            },
        }
