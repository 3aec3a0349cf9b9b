"""CoAP ingest end to end with real aiocoap clients over UDP on loopback: CON and NON,
formats by Content-Format, block-wise uploads, a lost answer, saturation, OSCORE keys from
the registry, replies in the response — against real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import psycopg
from aiocoap import oscore
from aiocoap.numbers.codes import Code

from decoders.hj212 import frame as hj212_frame
from ingest.service import Service
from tests.helpers import api_call, env_frame, query, running, settings_for, wait_until

T0 = 1_767_225_600


def pack(dev: str, minute: int, value: float = 21.5, n: str = "temperature") -> bytes:
    return json.dumps([{"bn": dev, "n": n, "v": value, "t": T0 + 60 * minute}]).encode()


def coap_settings(pg_url: str, broker: Any, prefix: str, **coap: Any) -> Any:
    return settings_for(
        pg_url,
        broker,
        prefix,
        coap={"mode": "open", "port": 0, **coap},
        pipeline={"unknown_devices": "auto-provision", "flush_interval_ms": 50},
    )


@asynccontextmanager
async def client() -> AsyncIterator[aiocoap.Context]:
    ctx = await aiocoap.Context.create_client_context()
    try:
        yield ctx
    finally:
        await ctx.shutdown()


async def post(
    ctx: aiocoap.Context,
    port: int,
    path: str,
    payload: bytes,
    cf: int | None = None,
    con: bool = True,
    timeout: float = 15,
) -> aiocoap.Message:
    msg = aiocoap.Message(
        code=aiocoap.POST,
        uri=f"coap://127.0.0.1:{port}{path}",
        payload=payload,
        transport_tuning=aiocoap.Reliable if con else aiocoap.Unreliable,
    )
    if cf is not None:
        msg.opt.content_format = cf
    try:
        return await asyncio.wait_for(ctx.request(msg).response, timeout)
    except oscore.NotAProtectedMessage as exc:  # an OSCORE refusal is sent unprotected
        answer: aiocoap.Message = exc.plain_message
        return answer


def coap_port(svc: Service) -> int:
    assert svc.coap is not None
    assert svc.coap.port is not None
    return svc.coap.port


def counter(svc: Service, metric: Any, *labels: str) -> float:
    value: float = (metric.labels(*labels) if labels else metric)._value.get()
    return value


async def test_uplinks_in_every_format_are_answered_after_their_commit(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    tlv = bytes([0xE4, 0x16, 0x44]) + struct.pack(">f", 19.5)  # 3303/0: 5700 = 19.5 °C
    async with running(coap_settings(pg_url, broker, topic_prefix)) as svc, client() as ctx:
        port = coap_port(svc)
        answers = {
            "senml-json": await post(ctx, port, "/up/env/dev-j", pack("dev-j", 0), 110),
            "senml-cbor": await post(
                ctx, port, "/up/env/dev-c",
                cbor2.dumps([{-2: "dev-c", 0: "humidity", 2: 55.0, 6: T0}]), 112,
            ),
            "lwm2m-tlv": await post(ctx, port, "/up/env/ep-17/3303/0", tlv, 11542),
            "nbiot-env": await post(
                ctx, port, "/up/env/861000000000005/nbiot-env", env_frame(861000000000005, 1), 42
            ),
            "non": await post(ctx, port, "/up/env/dev-n", pack("dev-n", 0), 110, con=False),
            "garbage": await post(ctx, port, "/up/env/dev-g", b"{not json", 110),
            "unsupported": await post(ctx, port, "/up/env/dev-u", b"\x01", 60),
        }  # fmt: skip
        stats = svc.pipeline.stats if svc.pipeline else None
        assert stats is not None
        acked = counter(svc, svc.metrics.frames_acked, "coap")
        received = counter(svc, svc.metrics.frames_received, "coap", "senml-json")
    codes = {k: str(v.code) for k, v in answers.items()}
    assert codes == {
        "senml-json": "2.04 Changed",
        "senml-cbor": "2.04 Changed",
        "lwm2m-tlv": "2.04 Changed",
        "nbiot-env": "2.04 Changed",
        "non": "2.04 Changed",
        "garbage": "4.00 Bad Request",
        "unsupported": "4.15 Unsupported Content Format",
    }
    assert answers["garbage"].payload.startswith(b"json_invalid: ")
    assert answers["non"].mtype == aiocoap.NON
    assert query(
        pg_url,
        "SELECT d.external_id, r.metric, r.value FROM env_readings r "
        "JOIN devices d ON d.id = r.device_id WHERE r.metric IN ('temperature', 'humidity') "
        "ORDER BY 1, 2",
    ) == [
        ("861000000000005", "humidity", 50.0),
        ("861000000000005", "temperature", 21.0),
        ("dev-c", "humidity", 55.0),
        ("dev-j", "temperature", 21.5),
        ("dev-n", "temperature", 21.5),
        ("ep-17", "temperature", 19.5),
    ]
    assert sorted(query(pg_url, "SELECT transport, source, reason FROM dead_letters")) == [
        (
            "coap",
            "/up/env/dev-g",
            "json_invalid: Expecting property name enclosed in double "
            "quotes: line 1 column 2 (char 1)",
        ),
        ("coap", "/up/env/dev-u", "unknown_format: no decoder named 'content-format 60'"),
    ]
    assert acked == 7  # every request is answered after the commit, the NON one too
    assert received == 3


async def test_unknown_devices_are_forbidden_when_their_profile_says_reject(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = coap_settings(pg_url, broker, topic_prefix)
    settings.pipeline.unknown_devices = "reject"  # type: ignore[assignment]
    async with running(settings) as svc, client() as ctx:
        answer = await post(ctx, coap_port(svc), "/up/env/stranger", pack("stranger", 0), 110)
    assert (str(answer.code), answer.payload) == ("4.03 Forbidden", b"unknown_device: stranger")


async def test_a_large_uplink_arrives_block_wise(pg_url: str, broker, topic_prefix: str) -> None:  # type: ignore[no-untyped-def]
    big = json.dumps(
        [{"bn": "dev-big", "n": f"m{i:03d}", "v": i, "t": T0} for i in range(300)]
    ).encode()
    assert len(big) > 4 * 1024
    async with running(coap_settings(pg_url, broker, topic_prefix)) as svc, client() as ctx:
        answer = await post(ctx, coap_port(svc), "/up/env/dev-big", big, 110)
        continued = counter(svc, svc.metrics.coap_responses, "2.31")
    assert str(answer.code) == "2.04 Changed"
    assert continued >= len(big) // 1024 - 1  # every block but the last got 2.31 Continue
    assert query(pg_url, "SELECT count(*), sum(value) FROM env_readings") == [(300, 44850.0)]


class LossyProxy(asyncio.DatagramProtocol):
    """A UDP relay between one client and the server that drops the server's first
    answer, as a radio link would lose an ACK."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: Any = None
        self.dropped = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if addr[1] == self.server[1]:
            if self.dropped == 0:
                self.dropped += 1
                return
            self.transport.sendto(data, self.client)
        else:
            self.client = addr
            self.transport.sendto(data, self.server)


async def test_a_lost_answer_is_answered_again_and_the_frame_stored_once(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    async with running(coap_settings(pg_url, broker, topic_prefix)) as svc, client() as ctx:
        loop = asyncio.get_running_loop()
        transport, proxy = await loop.create_datagram_endpoint(
            lambda: LossyProxy(("127.0.0.1", coap_port(svc))), local_addr=("127.0.0.1", 0)
        )
        try:
            answer = await post(ctx, transport.get_extra_info("sockname")[1], "/up/env/d1",
                                pack("d1", 0), 110)  # fmt: skip
        finally:
            transport.close()
        duplicates = counter(svc, svc.metrics.coap_duplicates)
    assert (str(answer.code), proxy.dropped, duplicates) == ("2.04 Changed", 1, 1)
    assert query(pg_url, "SELECT count(*) FROM env_readings") == [(1,)]


async def test_a_saturated_pipeline_answers_503_with_max_age(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = coap_settings(pg_url, broker, topic_prefix, retry_after_s=7)
    settings.pipeline.max_inflight_frames = 5
    settings.pipeline.batch_max_frames = 5
    async with running(settings) as svc, client() as ctx:
        port = coap_port(svc)
        await post(ctx, port, "/up/env/warm", pack("warm", 0), 110)  # creates env_readings
        # five devices (one client each: a client has one request outstanding, RFC 7252 NSTART)
        devices = [await aiocoap.Context.create_client_context() for _ in range(5)]
        try:
            with psycopg.connect(pg_url) as blocker:  # commits wait: the pipeline fills up
                blocker.execute("LOCK TABLE env_readings IN ACCESS EXCLUSIVE MODE")
                first = [
                    asyncio.ensure_future(post(d, port, f"/up/env/s{i}", pack(f"s{i}", 1), 110))
                    for i, d in enumerate(devices)
                ]
                await wait_until(lambda: svc.pipeline is not None and svc.pipeline.inflight >= 5)
                refused = await post(ctx, port, "/up/env/late", pack("late", 1), 110)
                blocker.rollback()
            accepted = await asyncio.gather(*first)
        finally:
            for d in devices:
                await d.shutdown()
        overload = counter(svc, svc.metrics.coap_responses, "5.03")
    assert (str(refused.code), refused.opt.max_age) == ("5.03 Service Unavailable", 7)
    assert [str(a.code) for a in accepted] == ["2.04 Changed"] * 5
    assert overload == 1
    assert query(pg_url, "SELECT count(*) FROM env_readings") == [(6,)]


def _oscore_client_dir(tmp: Path, kid: bytes, secret: bytes) -> Path:
    d = tmp / f"ctx-{kid.hex()}-{secret.hex()[:6]}"
    d.mkdir()
    (d / "settings.json").write_text(
        json.dumps({"sender-id_hex": kid.hex(), "recipient-id_hex": "", "secret_hex": secret.hex()})
    )
    return d


@asynccontextmanager
async def oscore_client(port: int, ctx_dir: Path) -> AsyncIterator[aiocoap.Context]:
    ctx = await aiocoap.Context.create_client_context()
    ctx.client_credentials.load_from_dict(
        {f"coap://127.0.0.1:{port}/*": {"oscore": {"basedir": str(ctx_dir)}}}
    )
    try:
        yield ctx
    finally:
        await ctx.shutdown()


async def test_oscore_keys_from_the_registry_admit_the_right_device_only(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from decoders.registry import load_registry
    from device_registry.importer import import_devices
    from storage.migrate import TimescaleMode, migrate

    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    secret_a, secret_b = bytes(range(16)), bytes(range(16, 32))
    devices = tmp_path / "devices.csv"
    devices.write_text(
        "external_id,oscore_kid,oscore_secret\n"
        f"nb-a,0a01,{secret_a.hex()}\nnb-b,0a02,{secret_b.hex()}\n"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert import_devices(conn, devices).inserted == 2
    settings = coap_settings(pg_url, broker, topic_prefix, mode="oscore")
    async with running(settings) as svc:
        port = coap_port(svc)
        good = _oscore_client_dir(tmp_path, b"\x0a\x01", secret_a)
        wrong_key = _oscore_client_dir(tmp_path, b"\x0a\x01", secret_b)
        unknown = _oscore_client_dir(tmp_path, b"\x0b\x01", secret_a)
        async with oscore_client(port, good) as ctx:
            ok = await post(ctx, port, "/up/env/nb-a", pack("nb-a", 0), 110)
            other = await post(ctx, port, "/up/env/nb-b", pack("nb-b", 0), 110)
        async with oscore_client(port, wrong_key) as ctx:
            bad = await post(ctx, port, "/up/env/nb-a", pack("nb-a", 1), 110)
        async with oscore_client(port, unknown) as ctx:
            stranger = await post(ctx, port, "/up/env/nb-a", pack("nb-a", 2), 110)
        async with client() as ctx:
            plain = await post(ctx, port, "/up/env/nb-a", pack("nb-a", 3), 110)
        failures = {
            r: counter(svc, svc.metrics.coap_oscore_failures, r)
            for r in ("echo", "decryption", "unknown_kid", "missing", "wrong_device")
        }
    assert str(ok.code) == "2.04 Changed"
    assert str(other.code) == "4.03 Forbidden"  # nb-a's key, nb-b's path
    assert str(bad.code) == "4.01 Unauthorized"
    assert str(stranger.code) == "4.01 Unauthorized"
    assert (str(plain.code), plain.payload) == ("4.01 Unauthorized", b"OSCORE required")
    assert failures == {
        "echo": 1,  # the first request after start: 4.01 + Echo, retried by the client
        "decryption": 1,
        "unknown_kid": 1,
        "missing": 1,
        "wrong_device": 1,
    }
    assert query(
        pg_url,
        "SELECT d.external_id FROM env_readings r JOIN devices d ON d.id = r.device_id",
    ) == [("nb-a",)]


async def test_a_hj212_reply_travels_in_the_coap_response(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    asked = hj212_frame(
        "QN=20260101000000001;ST=22;CN=2011;PW=123456;MN=ST-R;Flag=5;"
        "CP=&&DataTime=20260101080000;a34004-Rtd=35.0,a34004-Flag=N&&"
    )
    async with running(coap_settings(pg_url, broker, topic_prefix)) as svc, client() as ctx:
        answer = await post(ctx, coap_port(svc), "/up/air/ST-R/hj212", asked, 0)
    assert str(answer.code) == "2.04 Changed"
    assert b"CN=9014" in answer.payload
    assert b"QN=20260101000000001" in answer.payload


async def test_discovery_and_wrong_requests_get_clear_answers(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    async with running(coap_settings(pg_url, broker, topic_prefix)) as svc, client() as ctx:
        port = coap_port(svc)
        core = await asyncio.wait_for(
            ctx.request(
                aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/.well-known/core")
            ).response,
            10,
        )
        get = await asyncio.wait_for(
            ctx.request(
                aiocoap.Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/up/env/d1")
            ).response,
            10,
        )
        elsewhere = await post(ctx, port, "/down/env/d1", pack("d1", 0), 110)
        ambiguous = await post(ctx, port, "/up/env/d1", b"\x01\x02", 42)
    assert (str(core.code), core.opt.content_format) == ("2.05 Content", 40)
    assert core.payload.startswith(b'</up>;rt="cityflux.uplink"')
    assert str(get.code) == "4.05 Method Not Allowed"
    assert str(elsewhere.code) == "4.04 Not Found"
    # octet-stream with no format in the path and no profile for the kind: which decoder?
    assert str(ambiguous.code) == "4.15 Unsupported Content Format"


async def test_readyz_checks_coap_only_when_on(pg_url: str, broker, topic_prefix: str) -> None:  # type: ignore[no-untyped-def]
    async with running(settings_for(pg_url, broker, topic_prefix)) as svc:
        off = await asyncio.to_thread(api_call, svc.http_port or 0, "/readyz")
    # a component that is off is not a check (as Kubernetes' /readyz lists only its checks)
    assert off == (
        200,
        {"status": "ready", "checks": {"mqtt": True, "database": True, "accepting": True}},
    )
    async with running(coap_settings(pg_url, broker, topic_prefix)) as svc:
        on = await asyncio.to_thread(api_call, svc.http_port or 0, "/readyz")
    assert on == (
        200,
        {
            "status": "ready",
            "checks": {"mqtt": True, "coap": True, "database": True, "accepting": True},
        },
    )


async def test_a_path_with_a_bad_device_id_is_dead_lettered_and_answered_4_00(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = coap_settings(pg_url, broker, topic_prefix)
    async with running(settings) as svc, client() as ctx:
        msg = aiocoap.Message(code=aiocoap.POST, payload=pack("x", 0))
        msg.remote = aiocoap.message.UndecidedRemote("coap", f"127.0.0.1:{coap_port(svc)}")
        msg.opt.uri_path = ("up", "env", "dev\x01ice")
        msg.opt.content_format = 110
        answer = await asyncio.wait_for(ctx.request(msg).response, 15)
        good = await post(ctx, coap_port(svc), "/up/env/dev-ok", pack("dev-ok", 0), 110)
    reason = "device_id_invalid: dev\\x01ice: 1-64 bytes without spaces, control characters"
    assert str(answer.code) == "4.00 Bad Request"
    assert answer.payload.decode().startswith(reason)
    assert str(good.code) == "2.04 Changed"
    [(source, stored_reason)] = query(pg_url, "SELECT source, reason FROM dead_letters")
    assert source == "/up/env/dev\x01ice"  # the raw path, as the device sent it
    assert stored_reason.startswith(reason)
    assert query(pg_url, "SELECT count(*) FROM devices WHERE external_id = %s", "dev\x01ice") == [
        (0,)
    ]
