"""CoAP under hostile traffic (docs/design/0010-coap-limits.md): floods of unknown OSCORE key
ids and of block-wise uploads keep the listener's memory and its registry look-ups bounded,
while a genuine device still gets 2.04 — real UDP on loopback, real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import tracemalloc
from pathlib import Path

import aiocoap
import psycopg
from aiocoap.optiontypes import BlockOption

from tests.helpers import running
from tests.integration.test_coap import (
    T0,
    _oscore_client_dir,
    client,
    coap_port,
    coap_settings,
    oscore_client,
    pack,
    post,
)

FLOOD = 5_000
MEMORY_BOUND = 16 << 20  # what the flood may add to the process' traced memory, at most


def _datagram(
    mid: int, path: str, payload: bytes, oscore: bytes | None = None, **opts: object
) -> bytes:
    msg = aiocoap.Message(code=aiocoap.POST, payload=payload)
    msg.mtype, msg.mid, msg.token = aiocoap.CON, mid & 0xFFFF, mid.to_bytes(4, "big")
    msg.opt.uri_path = tuple(p for p in path.split("/") if p)
    if oscore is not None:
        msg.opt.oscore = oscore
    for name, value in opts.items():
        setattr(msg.opt, name, value)
    return msg.encode()


def _senml(device: str) -> bytes:
    """A SenML JSON pack of more than one 1 KiB block."""
    records = [{"n": "temperature", "v": 20 + i / 10, "t": T0 + 60 * i} for i in range(30)]
    records[0]["bn"] = device
    body = json.dumps(records).encode()
    assert 1024 < len(body) <= 2048
    return body


def _answers(sock: socket.socket, want: int, timeout: float = 10) -> list[str]:
    """Codes of the answers a raw socket receives (until ``want`` came or ``timeout``)."""
    got: list[str] = []
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        got.append(str(aiocoap.Message.decode(data).code))
    return got


def _flood_kids(port: int, n: int) -> int:
    """``n`` OSCORE requests, each naming a random key id no device has; how many were
    answered (read as they come: a socket's buffer holds a few hundred datagrams)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    answers: list[str] = []
    reader = threading.Thread(target=lambda: answers.extend(_answers(sock, n, timeout=30)))
    reader.start()
    for i in range(n):
        kid = os.urandom(6)
        option = bytes([0x09, i & 0xFF]) + kid  # k flag, a 1-byte Partial IV, then the kid
        sock.sendto(_datagram(i, "/up/env/nb-x", os.urandom(24), option), ("127.0.0.1", port))
        if i % 50 == 49:
            time.sleep(0.005)  # ~10,000 a second: the loop keeps up, the kernel drops nothing
    reader.join()
    sock.close()
    return len(answers)


async def test_a_flood_of_unknown_oscore_key_ids_is_bounded_and_a_device_still_gets_through(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from decoders.registry import load_registry
    from device_registry.importer import import_devices
    from storage.migrate import TimescaleMode, migrate

    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    secret = bytes(range(16))
    devices = tmp_path / "devices.csv"
    devices.write_text(f"external_id,oscore_kid,oscore_secret\nnb-a,0a01,{secret.hex()}\n")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        import_devices(conn, devices)
    settings = coap_settings(
        pg_url,
        broker,
        topic_prefix,
        mode="oscore",
        oscore_unknown_kids=500,
        oscore_lookups_per_s=100,
    )
    async with running(settings) as svc:
        port = coap_port(svc)
        assert svc.coap is not None
        keys = svc.coap._keys
        assert keys is not None
        device = _oscore_client_dir(tmp_path, b"\x0a\x01", secret)
        async with oscore_client(port, device) as ctx:
            before = await post(ctx, port, "/up/env/nb-a", pack("nb-a", 0), 110)
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            started = time.monotonic()
            answered = await asyncio.to_thread(_flood_kids, port, FLOOD)
            took = time.monotonic() - started
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            after = await post(ctx, port, "/up/env/nb-a", pack("nb-a", 1), 110)
        lookups, unknown = keys.lookups, keys.unknown_kids
        busy = svc.metrics.coap_oscore_failures.labels("busy")._value.get()
    assert str(before.code) == str(after.code) == "2.04 Changed"
    assert answered == FLOOD  # every datagram answered: 4.01 or 5.03, none dropped
    assert unknown <= 500
    assert lookups <= 100 * took + 100 + 1  # the token bucket: a second's burst, then the rate
    assert busy >= FLOOD - lookups - 1
    assert peak < MEMORY_BOUND, f"the flood added {peak / 2**20:.1f} MiB"


async def test_block_wise_uploads_are_capped_per_remote_and_in_total(
    pg_url: str, broker, topic_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    settings = coap_settings(pg_url, broker, topic_prefix, max_uploads=6, max_uploads_per_remote=2)
    first = BlockOption.BlockwiseTuple(0, True, 6)  # block 0 of 1 KiB blocks, more to come
    async with running(settings) as svc:
        port = coap_port(svc)
        assert svc.coap is not None
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
        try:
            # one remote: two uploads assembled at once, the third refused
            one = socks[0]
            body = _senml("dev-0")
            one.sendto(
                _datagram(0, "/up/env/dev-0", body[:1024], block1=first, content_format=110),
                ("127.0.0.1", port),
            )
            for i in (1, 2):
                one.sendto(
                    _datagram(i, f"/up/env/dev-{i}", b"x" * 1024, block1=first), ("127.0.0.1", port)
                )
            per_remote = await asyncio.to_thread(_answers, one, 3)
            # more remotes: six in all, then refused
            total = []
            for n, s in enumerate(socks[1:], start=1):
                for i in range(2):
                    s.sendto(
                        _datagram(100 * n + i, f"/up/env/d{n}-{i}", b"y" * 1024, block1=first),
                        ("127.0.0.1", port),
                    )
                total += await asyncio.to_thread(_answers, s, 2)
            held = len(svc.coap._uploads)
            # a genuine device's plain uplink is still answered after its commit
            async with client() as ctx:
                ok = await post(ctx, port, "/up/env/nb-z", pack("nb-z", 0), 110)
            # finishing an upload frees its slot
            last = BlockOption.BlockwiseTuple(1, False, 6)
            one.sendto(
                _datagram(9, "/up/env/dev-0", body[1024:], block1=last, content_format=110),
                ("127.0.0.1", port),
            )
            finished = await asyncio.to_thread(_answers, one, 1)
            one.sendto(
                _datagram(10, "/up/env/dev-2", b"x" * 1024, block1=first), ("127.0.0.1", port)
            )
            again = await asyncio.to_thread(_answers, one, 1)
        finally:
            for s in socks:
                s.close()
    assert per_remote == ["2.31 Continue", "2.31 Continue", "5.03 Service Unavailable"]
    assert total.count("2.31 Continue") == 4  # 2 + 4 = the total cap of 6
    assert total.count("5.03 Service Unavailable") == 4
    assert held == 6  # memory: at most max_uploads × max_body_bytes
    assert str(ok.code) == "2.04 Changed"
    assert finished == ["2.04 Changed"]
    assert again == ["2.31 Continue"]
