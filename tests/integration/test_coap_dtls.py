"""DTLS-PSK for CoAP devices, tested with libcoap's C client (``coap-client-openssl``, Debian
libcoap3-bin: a DTLS stack nobody here wrote) against the service's coaps:// listener and real
PostgreSQL: each device's PSK identity and key come from the registry; the right key is 2.04
and a stored row, a wrong key or an unknown identity gets no session; handshakes in progress
stay under their cap while a genuine device still gets in."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest.service import Service
from tests.helpers import query, running, settings_for, wait_until
from tests.integration.test_coap import counter, pack

COAP_CLIENT = shutil.which("coap-client-openssl")
pytestmark = pytest.mark.skipif(
    COAP_CLIENT is None, reason="needs libcoap's coap-client-openssl (Debian libcoap3-bin)"
)
KEY_A = b"nb-a-psk-0123456"  # printable: coap-client's -k takes the key as text
KEY_B = b"nb-b-psk-6543210"


def dtls_settings(pg_url: str, broker: Any, prefix: str, **coap: Any) -> Any:
    return settings_for(
        pg_url,
        broker,
        prefix,
        coap={"mode": "off", "dtls": "psk", "dtls_port": 0, **coap},
        pipeline={"flush_interval_ms": 50},
    )


def register(pg_url: str, tmp_path: Path) -> None:
    from decoders.registry import load_registry
    from device_registry.importer import import_devices
    from storage.migrate import TimescaleMode, migrate

    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    devices = tmp_path / "devices.csv"
    devices.write_text(
        "external_id,kind,psk_identity,psk_key\n"
        f"nb-a,env,nb-a@city,{KEY_A.hex()}\nnb-b,env,nb-b@city,{KEY_B.hex()}\n"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert import_devices(conn, devices).inserted == 2


def coaps_port(svc: Service) -> int:
    assert svc.coaps is not None
    assert svc.coaps.port is not None
    return svc.coaps.port


async def coap_client(
    port: int, identity: str, key: bytes, path: str, payload: bytes, source: str = "127.0.0.1"
) -> str:
    """POST ``payload`` (SenML JSON) with libcoap over DTLS-PSK; the client's debug log
    (which shows the response's code as ``c:2.04``)."""
    assert COAP_CLIENT is not None
    proc = await asyncio.create_subprocess_exec(
        COAP_CLIENT,
        *("-v", "7", "-B", "10", "-a", source, "-m", "post", "-t", "110"),
        *("-u", identity, "-k", key.decode(), "-e", payload.decode()),
        f"coaps://127.0.0.1:{port}{path}",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode(errors="replace")


def answer(log: str) -> str | None:
    """The code of the (last) response the client logged."""
    codes = [
        part[2:]
        for line in log.splitlines()
        if " c:" in line
        for part in line.split()
        if part.startswith("c:")
    ]
    answers = [c for c in codes if c[0] in "2345" and c != "0.00"]
    return answers[-1] if answers else None


async def test_psk_from_the_registry_admits_the_right_device_only(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    register(pg_url, tmp_path)
    async with running(dtls_settings(pg_url, broker, topic_prefix)) as svc:
        port = coaps_port(svc)
        ok = await coap_client(port, "nb-a@city", KEY_A, "/up/env/nb-a", pack("nb-a", 0))
        other = await coap_client(port, "nb-a@city", KEY_A, "/up/env/nb-b", pack("nb-b", 0))
        wrong_key = await coap_client(port, "nb-a@city", KEY_B, "/up/env/nb-a", pack("nb-a", 1))
        stranger = await coap_client(port, "nb-z@city", KEY_A, "/up/env/nb-a", pack("nb-a", 2))
        failures = {
            r: counter(svc, svc.metrics.coap_dtls_failures, r)
            for r in ("handshake", "unknown_identity", "wrong_device")
        }
    assert answer(ok) == "2.04", ok
    assert answer(other) == "4.03", other  # nb-a's key, nb-b's path
    assert answer(wrong_key) is None, wrong_key  # no session: nothing answered
    assert answer(stranger) is None, stranger
    assert "alert unknown psk identity" in stranger
    assert failures == {"handshake": 1, "unknown_identity": 1, "wrong_device": 1}
    assert query(
        pg_url, "SELECT d.external_id FROM env_readings r JOIN devices d ON d.id = r.device_id"
    ) == [("nb-a",)]


def _half_handshake(port: int) -> socket.socket:
    """A DTLS client that sends its ClientHello, answers the cookie and then goes silent:
    the server holds a handshake in progress for it."""
    from mbedtls import tls

    ctx = tls.ClientContext(
        tls.DTLSConfiguration(
            pre_shared_key=("flood", bytes(16)),
            validate_certificates=False,
            lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
        )
    )
    buf = ctx.wrap_buffers(None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    for _ in range(2):  # ClientHello -> HelloVerifyRequest; ClientHello + cookie -> ServerHello
        while True:
            try:
                buf.do_handshake()
            except tls.WantReadError:
                break
            except tls.WantWriteError:
                pass
            out = buf.peek_outgoing(4096)
            if out:
                sock.send(out)
                buf.consume_outgoing(len(out))
        out = buf.peek_outgoing(4096)
        if out:
            sock.send(out)
            buf.consume_outgoing(len(out))
        buf.receive_from_network(sock.recv(4096))
    return sock


async def test_handshakes_in_progress_stay_capped_and_a_device_still_gets_in(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    register(pg_url, tmp_path)
    settings = dtls_settings(
        pg_url, broker, topic_prefix, dtls_max_handshakes=8, dtls_max_handshakes_per_host=100
    )
    async with running(settings) as svc:
        port = coaps_port(svc)
        assert svc.coaps is not None
        endpoint = svc.coaps._dtls
        assert endpoint is not None
        socks = [await asyncio.to_thread(_half_handshake, port) for _ in range(40)]
        assert endpoint.handshakes == 8  # the 32 oldest were dropped as new ones came
        dropped = counter(svc, svc.metrics.coap_dtls_failures, "handshakes")
        assert dropped == 32
        ok = await coap_client(port, "nb-a@city", KEY_A, "/up/env/nb-a", pack("nb-a", 0))
        assert answer(ok) == "2.04", ok
        assert endpoint.handshakes <= 8
        assert endpoint.sessions <= 9
        for s in socks:
            s.close()
    await wait_until(lambda: len(query(pg_url, "SELECT 1 FROM env_readings")) == 1, what="a row")


async def test_the_listener_refuses_to_start_without_its_library(
    pg_url: str, broker, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import sys

    from ingest.coap_dtls import DtlsUnavailableError

    monkeypatch.setitem(sys.modules, "mbedtls", None)  # as if python-mbedtls were missing
    with pytest.raises(DtlsUnavailableError, match=r'pip install "cityflux\[dtls\]"'):
        async with running(dtls_settings(pg_url, broker, topic_prefix)):
            pass
