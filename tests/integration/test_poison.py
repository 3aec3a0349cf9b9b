"""Every poison frame of the corpus, amid 1,000 good frames of its format in the same batch,
through the real broker and database: every good frame stored once, each poison frame
dead-lettered once with its reason, the service alive, stored + dead-lettered == acknowledged.
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from typing import Any

import numpy as np
import pytest

from core.frames import FrameBatch
from decoders.registry import load_registry
from ingest.topics import UplinkTopic, parse_uplink, uplink
from simulators.models import MODELS
from simulators.models.base import GroupContext
from tests.helpers import T0, publish, query, running, settings_for, wait_until
from tests.poison import PoisonCase, load_poison_cases

GOOD_PER_FORMAT = 1000
LARGEST = 65_536  # pipeline.max_frame_bytes (the default)
REGISTRY = load_registry()
KIND = {"value": "env", "lwm2m-tlv": "env", "lwm2m-rd": "lwm2m"}

# (format, model) for the formats a simulated device speaks
MODEL_OF = {
    fmt: name for name, cls in MODELS.items() for fmt in cls.formats if name != "water-level"
}


def _model_frames(fmt: str, prefix: str) -> list[tuple[str, bytes]]:
    cls = MODELS[MODEL_OF[fmt]]
    ctx = GroupContext(
        name=f"poison-{fmt}", index=sorted(MODEL_OF).index(fmt), count=50,
        interval_us=60_000_000, seed=12, start_us=T0 * 1_000_000, utc_offset_s=8 * 3600,
        city_lat=22.54, city_lon=114.06, city_radius_km=10.0, format=fmt,
    )  # fmt: skip
    model = cls(ctx, cls.options())  # type: ignore[call-arg]
    ids = model.external_ids()
    out: list[tuple[str, bytes]] = []
    end = 0
    while len(out) < GOOD_PER_FORMAT:
        fr = model.frames(end, end + 600_000_000)
        end += 600_000_000
        out += [
            (uplink(cls.kind, ids[d], fmt, prefix), p)
            for d, p in zip(fr.devices.tolist(), fr.payloads, strict=True)
        ]
    return out[:GOOD_PER_FORMAT]


def good_frames(fmt: str, prefix: str) -> list[tuple[str, bytes]]:
    """1,000 valid frames of a format, from distinct devices and times."""
    if fmt in MODEL_OF:
        return _model_frames(fmt, prefix)
    if fmt == "value":
        return [
            (uplink("env", f"v-{i % 40}", "value", prefix, "/temperature"), f"{i / 10}".encode())
            for i in range(GOOD_PER_FORMAT)
        ]
    if fmt == "lwm2m-tlv":  # IPSO temperature 3303/0: resource 5700, a 4-byte float
        return [
            (
                uplink("env", f"ep-{i % 40}", "lwm2m-tlv", prefix, "/3303/0"),
                b"\xe4\x16\x44" + struct.pack(">f", 15 + i / 100),
            )
            for i in range(GOOD_PER_FORMAT)
        ]
    if fmt == "lwm2m-rd":  # Register frames as the CoAP listener builds them from /rd
        return [
            (
                uplink("lwm2m", f"ep-{i % 40}", "lwm2m-rd", prefix),
                f"register loc{i}\nep=ep-{i % 40}&lt={60 + i}&b=UQ\n</1/0>,</3303/0>".encode(),
            )
            for i in range(GOOD_PER_FORMAT)
        ]
    raise AssertionError(f"no good frames for {fmt}: add a generator")


def poison_topic(case: PoisonCase, prefix: str) -> str:
    """The topic a poison frame of the corpus is published on."""
    kind = KIND.get(case.format) or MODELS[MODEL_OF[case.format]].kind
    return uplink(kind, case.device or "poison-dev", case.format, prefix, case.path)


# A control character in a topic never reaches us over Mosquitto: it refuses the PUBLISH as
# malformed UTF-8 (MQTT 5 §1.5.4) and drops the publisher; over CoAP it does reach us
# (test_coap.py), and tests/unit/test_topics.py covers the parser.
TRANSPORT_CASES = [  # (topic levels after the prefix, payload, reason prefix)
    ("up/env/" + "d" * 80 + "/senml-json", b'[{"n":"t","v":1}]', "device_id_invalid: 80 bytes"),
    ("up/env//senml-json", b'[{"n":"t","v":1}]', "device_id_invalid: empty"),
    ("up//dev-1/senml-json", b'[{"n":"t","v":1}]', "kind_invalid: empty"),
    ("up/env/dev-1/senml-json", b"[" + b" " * 70_000 + b"]", "frame_too_large: 70002 bytes"),
    ("up/env/dev-1/no-such-format", b"1", "unknown_format: no decoder named 'no-such-format'"),
    ("a/b", b"1", "topic_invalid"),
]


def _unique_keys(fmt: str, frames: list[tuple[str, bytes]]) -> Counter[str]:
    """Rows per table the good frames make, counted once per natural key (as stored)."""
    batch = FrameBatch(fmt, "test")
    for i, (topic, p) in enumerate(frames):
        up = parse_uplink(topic)
        assert isinstance(up, UplinkTopic)
        batch.append(p, topic, up.device, up.kind, T0 * 1_000_000 + i)
    dec = REGISTRY.get(fmt).decode_batch(batch)
    assert not dec.rejects, f"{fmt}: good frames rejected: {dec.rejects[:3]}"
    specs = {s.name: s for s in REGISTRY.tables()}
    out: Counter[str] = Counter()
    for table, rows in dec.rows.items():
        key = [c for c in specs[table].natural_key if c != "device_id"]
        cols = [rows.devices, *(rows.columns[c] for c in key)]
        out[table] += len({tuple(v) for v in zip(*(c.tolist() for c in cols), strict=True)})
    return out


@pytest.mark.slow
async def test_poison_amid_good_frames_is_dead_lettered_once_and_the_rest_stored(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    cases = load_poison_cases()
    formats = sorted({c.format for c in cases})
    assert set(formats) == set(REGISTRY.names())
    msgs: list[tuple[str, bytes]] = []
    expected_rows: Counter[str] = Counter()
    expected_dead: Counter[tuple[str, bytes]] = Counter()  # (reason prefix, payload)
    for fmt in formats:
        good = good_frames(fmt, topic_prefix)
        expected_rows += _unique_keys(fmt, good)
        poison = [(poison_topic(c, topic_prefix), c.payload, c.reason_prefix) for c in cases
                  if c.format == fmt]  # fmt: skip
        step = len(good) // (len(poison) + 1)
        for j, (topic, payload, reason) in enumerate(poison):  # amid the good frames
            good.insert((j + 1) * step + j, (topic, payload))
            # a frame over max_frame_bytes is refused at the listener, before any decoder
            why = f"frame_too_large: {len(payload)} bytes" if len(payload) > LARGEST else reason
            expected_dead[(why, payload[:LARGEST])] += 1
        msgs += good
    for levels, payload, reason in TRANSPORT_CASES:
        msgs.insert(len(msgs) // 2, (f"{topic_prefix}/{levels}", payload))
        expected_dead[(reason, payload[:LARGEST])] += 1
    settings = settings_for(
        pg_url, broker, topic_prefix, pipeline={"flush_interval_ms": 2000}, mqtt={"topics": [
            f"{topic_prefix}/up/+/+/+/#", f"{topic_prefix}/a/#"]},
    )  # fmt: skip
    async with running(settings) as svc:
        assert svc.pipeline is not None
        pipe = svc.pipeline
        assert await asyncio.to_thread(publish, broker, msgs) == len(msgs)
        await wait_until(lambda: pipe.stats.received == len(msgs), 120, f"{len(msgs)} frames")
        await wait_until(lambda: pipe.inflight == 0, 60, "every frame committed")
        stats = pipe.stats
        assert svc.mqtt is not None
        assert svc.mqtt.connected  # alive
    assert stats.acked == len(msgs)
    dead = query(pg_url, "SELECT reason, payload FROM dead_letters")
    assert stats.stored_frames + len(dead) == stats.acked
    got_dead = Counter(
        next((r for r, p in expected_dead if p == bytes(payload) and reason.startswith(r)),
             f"unexpected: {reason}")
        for reason, payload in dead
    )  # fmt: skip
    wanted: Counter[str] = Counter()
    for (r, _), n in expected_dead.items():
        wanted[r] += n
    assert got_dead == wanted or _explain(dead, expected_dead)
    for table, n in expected_rows.items():
        assert query(pg_url, f"SELECT count(*) FROM {table}") == [(n,)], table


def _explain(dead: list[tuple[Any, ...]], expected: Counter[tuple[str, bytes]]) -> bool:
    wanted = sorted(r for r, _ in expected)
    got = sorted(str(r) for r, _ in dead)
    raise AssertionError(f"dead letters differ:\nwanted prefixes {wanted}\ngot {got}")


def test_every_format_has_good_frames_for_the_poison_test() -> None:
    for fmt in REGISTRY.names():
        assert len(good_frames(fmt, "p")) == GOOD_PER_FORMAT, fmt
    assert np.unique([t for t, _ in good_frames("value", "p")]).shape[0] == 40
