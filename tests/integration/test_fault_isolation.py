"""No frame can stop ingestion or take its neighbours with it (real broker, real database).

A stage that raises for a batch makes the pipeline split the batch until the frames that cause
it are alone: those are dead-lettered with ``stage_error: <stage>: …``, every other frame is
stored, and the service goes on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import psycopg

from core.frames import Decoded, FrameBatch
from decoders.base import TableSpec
from decoders.nbiot_env import DECODER as NBIOT
from decoders.nbiot_env import encode_frame
from decoders.registry import DecoderRegistry, load_registry
from ingest.topics import uplink
from storage.migrate import TimescaleMode, migrate
from tests.helpers import (
    T0,
    env_frame,
    env_messages,
    frames_stored,
    publish,
    query,
    running,
    settings_for,
    wait_until,
)

POISON = b"BOOM"


@dataclass
class ExplodingDecoder:
    """nbiot-env, except that it raises for a whole batch holding a ``BOOM`` frame (a decoder
    bug: the contract says a decoder never raises)."""

    name: str = "boom-env"
    content_formats: tuple[int, ...] = ()
    tables: tuple[TableSpec, ...] = NBIOT.tables

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        if POISON in batch.payloads:
            raise RuntimeError("boom")
        return NBIOT.decode_batch(batch)


def _dead_letters(url: str) -> list[tuple[str, str, bytes]]:
    return [
        (str(r[0]), str(r[1]), bytes(r[2]))
        for r in query(url, "SELECT source, reason, payload FROM dead_letters ORDER BY id")
    ]


async def test_an_80_byte_device_id_is_dead_lettered_and_the_service_goes_on(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(pg_url, broker, topic_prefix)  # unknown devices: auto-provision
    long_id = "d" * 80
    bad_topic = uplink("env", long_id, "senml-json", topic_prefix)
    good = env_messages(topic_prefix, devices=6, per_device=10)
    msgs = [*good[:30], (bad_topic, b'[{"n":"t","v":21.5}]'), *good[30:]]
    async with running(settings) as svc:
        assert svc.pipeline is not None
        pipe = svc.pipeline
        assert await asyncio.to_thread(publish, broker, msgs) == len(msgs)
        await wait_until(lambda: pipe.stats.received == len(msgs), what="61 frames")
        # still alive: more frames are stored after it
        later = env_messages(topic_prefix, devices=1, per_device=5, base_imei=862000000000000)
        assert await asyncio.to_thread(publish, broker, later) == 5
        await wait_until(lambda: pipe.stats.received == len(msgs) + 5, what="5 more frames")
    assert frames_stored(pg_url) == 65
    assert _dead_letters(pg_url) == [
        (bad_topic, "device_id_invalid: 80 bytes (at most 64)", b'[{"n":"t","v":21.5}]')
    ]
    assert query(pg_url, "SELECT count(*) FROM devices WHERE length(external_id) > 64") == [(0,)]


async def test_a_copy_failure_dead_letters_only_the_frame_the_database_names(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a rule only the database knows
        conn.execute("ALTER TABLE env_readings ADD CONSTRAINT no_99 CHECK (value <> 99.5)")
    msgs = env_messages(topic_prefix, devices=10, per_device=20)
    poison_topic = uplink("env", "861000000000077", "nbiot-env", topic_prefix)
    poison = encode_frame(
        861000000000077, T0, 3, temperature=20, humidity=99.5, pm2_5=1, pm10=2, noise=30,
        battery=3600, rssi=-80,
    )  # fmt: skip
    msgs.insert(117, (poison_topic, poison))
    settings = settings_for(pg_url, broker, topic_prefix, pipeline={"flush_interval_ms": 500})
    async with running(settings) as svc:
        assert svc.pipeline is not None
        pipe = svc.pipeline
        assert await asyncio.to_thread(publish, broker, msgs) == len(msgs)
        await wait_until(lambda: pipe.stats.received == len(msgs), what="201 frames")
        assert pipe.stats.batches > 1  # the failing batch was split
        store_errors = svc.metrics.stage_errors.labels("store")._value.get()
    assert store_errors >= 1
    assert frames_stored(pg_url) == 200
    [(source, reason, payload)] = _dead_letters(pg_url)
    assert (source, payload) == (poison_topic, poison)
    assert reason.startswith("stage_error: store: CheckViolation: new row for relation")
    assert '"no_99"' in reason


async def test_a_decoder_that_raises_loses_only_the_frames_that_make_it_raise(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    decoders = DecoderRegistry([*load_registry(), ExplodingDecoder()])
    good = [
        (
            uplink("env", str(861000000000000 + d), "boom-env", topic_prefix),
            env_frame(861000000000000 + d, s),
        )
        for s in range(25)
        for d in range(20)
    ]
    bad_topic = uplink("env", "861000000000999", "boom-env", topic_prefix)
    msgs = list(good)
    for at in (3, 250, 499):
        msgs.insert(at, (bad_topic, POISON))
    settings = settings_for(pg_url, broker, topic_prefix, pipeline={"flush_interval_ms": 500})
    async with running(settings, decoders=decoders) as svc:
        assert svc.pipeline is not None
        pipe = svc.pipeline
        assert await asyncio.to_thread(publish, broker, msgs) == len(msgs)
        await wait_until(lambda: pipe.stats.received == len(msgs), what="503 frames")
        decode_errors = svc.metrics.stage_errors.labels("decode")._value.get()
        assert pipe.stats.rejected == 3
    assert decode_errors >= 1
    assert frames_stored(pg_url) == 500
    assert (
        _dead_letters(pg_url)
        == [(bad_topic, "stage_error: decode: RuntimeError: boom", POISON)] * 3
    )


async def test_a_key_too_long_for_the_index_and_a_utf8_kind_cost_nobody_else_anything(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    long_metric = "m" * 8000  # PostgreSQL's btree refuses an index row this long (class 54)
    bad = (uplink("env", "lm-bad", "value", topic_prefix, "/" + long_metric), b"1.5")
    utf8 = (uplink("环境", "dev-kind-utf8", "value", topic_prefix, "/t"), b"2.5")
    good = [(uplink("env", f"v-{i}", "value", topic_prefix, "/t"), b"3.5") for i in range(10)]
    msgs = [*good[:5], bad, utf8, *good[5:]]
    settings = settings_for(pg_url, broker, topic_prefix, pipeline={"flush_interval_ms": 500})
    async with running(settings) as svc:
        assert svc.pipeline is not None
        pipe = svc.pipeline
        assert await asyncio.to_thread(publish, broker, msgs) == len(msgs)
        await wait_until(lambda: pipe.stats.received == len(msgs), 30, "12 frames")
        await wait_until(lambda: pipe.inflight == 0, 30, "all committed")
    assert query(pg_url, "SELECT count(*) FROM env_readings") == [(11,)]
    assert query(pg_url, "SELECT kind FROM devices WHERE external_id = 'dev-kind-utf8'") == [
        ("环境",)
    ]
    [(reason,)] = query(pg_url, "SELECT reason FROM dead_letters")
    assert reason == "too_long: metric has 8000 characters, max 256"
