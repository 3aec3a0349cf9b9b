"""LwM2M over DTLS-PSK (coaps://) against real PostgreSQL over real UDP, with DTLS stacks
nobody here wrote: libcoap's C client (``coap-client-openssl``) registers, updates and sends
data, each call its own session; and since libcoap's client cannot take a request from the
server, a device built on python-mbedtls's DTLS client (Mbed TLS) speaking CoAP through
aiocoap's message codec holds ONE session in which it registers, is observed, takes its queued
Write and Execute after its Update and de-registers. The device is the one whose PSK opened
the session: another endpoint name is 4.03, a wrong key gets no session and no registration."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
from typing import Any

import aiocoap
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from decoders.registry import load_registry
from ingest.service import Service
from storage.migrate import TimescaleMode, migrate
from tests.helpers import query, running, settings_for, wait_until
from tests.integration.test_coap_dtls import answer

COAP_CLIENT = shutil.which("coap-client-openssl")
KEY_A = b"lw-a-psk-0123456"  # printable: coap-client's -k takes the key as text
KEY_B = b"lw-b-psk-6543210"


def settings(pg_url: str, broker: Any, prefix: str, **lwm2m: Any) -> Any:
    """LwM2M on both listeners: coap:// (open) and coaps:// (DTLS-PSK)."""
    return settings_for(
        pg_url,
        broker,
        prefix,
        coap={"mode": "open", "port": 0, "dtls": "psk", "dtls_port": 0},
        lwm2m={"mode": "server", **lwm2m},
        pipeline={"unknown_devices": "reject", "flush_interval_ms": 50},
    )


def devices(pg_url: str) -> None:
    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    query(
        pg_url,
        "INSERT INTO devices (external_id, kind, psk_identity, psk_key) VALUES "
        "('lw-a', 'lwm2m', 'lw-a@city', %s), ('lw-b', 'lwm2m', 'lw-b@city', %s)",
        KEY_A,
        KEY_B,
    )


def coaps_port(svc: Service) -> int:
    assert svc.coaps is not None
    assert svc.coaps.port is not None
    return svc.coaps.port


async def libcoap(
    port: int, identity: str, key: bytes, method: str, uri: str, payload: str, cf: int
) -> str:
    """One request with libcoap over DTLS-PSK; the client's debug log."""
    assert COAP_CLIENT is not None
    proc = await asyncio.create_subprocess_exec(
        COAP_CLIENT,
        *("-v", "7", "-B", "10", "-m", method, "-t", str(cf)),
        *("-u", identity, "-k", key.decode(), "-e", payload),
        f"coaps://127.0.0.1:{port}{uri}",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode(errors="replace")


@pytest.mark.skipif(
    COAP_CLIENT is None, reason="needs libcoap's coap-client-openssl (Debian libcoap3-bin)"
)
async def test_libcoap_registers_updates_and_sends_as_the_device_its_psk_names(
    pg_url: str, broker: Any, topic_prefix: str
) -> None:
    await asyncio.to_thread(devices, pg_url)
    senml = '[{"bn":"/3303/0/","n":"5700","v":18.5}]'
    async with running(settings(pg_url, broker, topic_prefix)) as svc:
        port = coaps_port(svc)
        reg = await libcoap(
            port, "lw-a@city", KEY_A, "post", "/rd?ep=lw-a&lt=60&b=UQ", "</3303/0>", 40
        )
        location = query(pg_url, "SELECT location FROM lwm2m_registrations")
        assert len(location) == 1, reg
        update = await libcoap(
            port, "lw-a@city", KEY_A, "post", f"/rd/{location[0][0]}?lt=120", "", 40
        )
        sent = await libcoap(port, "lw-a@city", KEY_A, "post", "/dp", senml, 110)
        other = await libcoap(port, "lw-a@city", KEY_A, "post", "/rd?ep=lw-b&lt=60", "</3/0>", 40)
        other_update = await libcoap(
            port, "lw-b@city", KEY_B, "post", f"/rd/{location[0][0]}", "", 40
        )
        wrong_key = await libcoap(
            port, "lw-b@city", KEY_A, "post", "/rd?ep=lw-b&lt=60", "</3/0>", 40
        )
        assert svc.lwm2m is not None
        held = {r.endpoint: r.lifetime_s for r in svc.lwm2m.registrations.values()}
        wrong_device = svc.metrics.coap_dtls_failures.labels("wrong_device")._value.get()
    assert answer(reg) == "2.01", reg
    assert answer(update) == "2.04", update
    assert answer(sent) == "2.04", sent
    assert answer(other) == "4.03", other  # lw-a's key, lw-b's endpoint name
    assert answer(other_update) == "4.04", other_update  # lw-b updating lw-a's registration
    assert answer(wrong_key) is None, wrong_key  # no session: nothing answered
    assert held == {"lw-a": 120}
    assert wrong_device == 1
    assert query(
        pg_url,
        "SELECT d.external_id, r.binding, r.lifetime_s, r.deregistered_at IS NULL "
        "FROM lwm2m_registrations r JOIN devices d ON d.id = r.device_id",
    ) == [("lw-a", "UQ", 120, True)]
    assert query(
        pg_url,
        "SELECT d.external_id, e.operation FROM lwm2m_registration_events e "
        "JOIN devices d ON d.id = e.device_id ORDER BY e.time",
    ) == [("lw-a", "register"), ("lw-a", "update")]
    assert query(
        pg_url,
        "SELECT d.external_id, r.metric, r.value FROM env_readings r "
        "JOIN devices d ON d.id = r.device_id",
    ) == [("lw-a", "/3303/0/5700", 18.5)]
    assert query(pg_url, "SELECT source, reason FROM dead_letters") == [
        ("/rd/" + location[0][0], f"unknown_registration: /rd/{location[0][0]}")
    ]


class DtlsDevice:
    """An LwM2M client in one DTLS-PSK session (python-mbedtls), CoAP by aiocoap's codec;
    blocking, run in a thread. It answers the server's GET (Observe), PUT and POST."""

    def __init__(self, port: int, identity: str, key: bytes) -> None:
        from mbedtls import tls

        self._tls = tls
        ctx = tls.ClientContext(
            tls.DTLSConfiguration(
                pre_shared_key=(identity, key),
                validate_certificates=False,
                lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
                highest_supported_version=tls.DTLSVersion.DTLSv1_2,
            )
        )
        self._buf = ctx.wrap_buffers(None)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.settimeout(5)
        self._sock.connect(("127.0.0.1", port))
        self._mid = random.randrange(0x10000)
        self.received: list[tuple[str, str, bytes]] = []  # (method, path, payload)
        self.temperature = b"21.5"

    def handshake(self) -> None:
        """Run the DTLS handshake (raises on failure: a TLS alert or silence)."""
        tls, buf = self._tls, self._buf
        while buf._handshake_state is not tls.HandshakeStep.HANDSHAKE_OVER:
            try:
                buf.do_handshake()
            except tls.WantReadError:
                self._flush()
                buf.receive_from_network(self._sock.recv(4096))
            except tls.WantWriteError:
                self._flush()
        self._flush()

    def _flush(self) -> None:
        while out := self._buf.peek_outgoing(4096):
            self._sock.send(out)
            self._buf.consume_outgoing(len(out))

    def _send(self, msg: Message) -> None:
        self._buf.write(msg.encode())
        self._flush()

    def _receive(self) -> Message:
        while True:
            self._buf.receive_from_network(self._sock.recv(4096))
            try:
                plain = self._buf.read(4096)
            except self._tls.WantReadError:
                continue
            if plain:
                return Message.decode(plain)

    def request(self, msg: Message) -> Message:
        """Send a CON request and return its response (serving the server meanwhile)."""
        self._mid = (self._mid + 1) & 0xFFFF
        msg.mtype, msg.mid, msg.token = aiocoap.CON, self._mid, random.randbytes(4)
        self._send(msg)
        for _ in range(50):
            got = self._receive()
            if got.token == msg.token and got.code != Code.EMPTY:
                if got.mtype == aiocoap.CON:  # a separate response: ACK it
                    self._send(self._ack(got, Message(code=Code.EMPTY)))
                return got
            self._serve(got)
        raise AssertionError("no response")

    def serve(self, until: Any) -> None:
        """Answer the server's requests until ``until()`` holds."""
        while not until():
            self._serve(self._receive())

    def _serve(self, got: Message) -> None:
        if not got.code.is_request():
            return  # an empty ACK of ours, or an ACK of a notification
        path = "/" + "/".join(got.opt.uri_path)
        self.received.append((str(got.code), path, got.payload))
        reply = self._ack(got, Message(), token=got.token)
        if got.code == Code.GET:
            reply.code, reply.payload = Code.CONTENT, self.temperature
            reply.opt.content_format = 0
            if got.opt.observe == 0:
                reply.opt.observe = 1
        else:
            reply.code = Code.CHANGED
        self._send(reply)

    @staticmethod
    def _ack(got: Message, msg: Message, token: bytes = b"") -> Message:
        msg.mtype, msg.mid, msg.token = aiocoap.ACK, got.mid, token
        return msg

    def close(self) -> None:
        self._sock.close()


def rd(
    path: str, query_: tuple[str, ...] = (), links: bytes = b"", code: Code = Code.POST
) -> Message:
    msg = Message(code=code, uri_path=tuple(path.split("/")), uri_query=query_, payload=links)
    if links:
        msg.opt.content_format = 40
    return msg


async def test_one_dtls_session_registers_is_observed_and_takes_queued_commands(
    pg_url: str, broker: Any, topic_prefix: str
) -> None:
    pytest.importorskip("mbedtls", reason="needs python-mbedtls (the dtls extra)")
    from mbedtls.exceptions import TLSError

    await asyncio.to_thread(devices, pg_url)
    cfg = settings(pg_url, broker, topic_prefix, observe={"*": ["/3303/0/5700"]})
    async with running(cfg) as svc:
        port = coaps_port(svc)
        assert svc.coap is not None  # coap:// listens too: the device must not be sent there
        intruder = DtlsDevice(port, "lw-b@city", KEY_A)
        with pytest.raises((TimeoutError, TLSError)):  # an alert, or silence
            await asyncio.to_thread(intruder.handshake)
        intruder.close()

        dev = DtlsDevice(port, "lw-a@city", KEY_A)
        again = DtlsDevice(port, "lw-a@city", KEY_A)  # the same device, later, in a new session
        try:
            await asyncio.to_thread(dev.handshake)
            links = b"</3303/0>,</3311/0>"
            created = await asyncio.to_thread(
                dev.request, rd("rd", ("ep=lw-a", "lt=300", "b=UQ"), links)
            )
            assert created.code == Code.CREATED, created
            location = "/".join(created.opt.location_path)

            await asyncio.to_thread(dev.serve, lambda: len(dev.received) >= 1)  # the Observe GET
            await wait_until(
                lambda: (
                    query(pg_url, "SELECT metric, value FROM env_readings")
                    == [("/3303/0/5700", 21.5)]
                ),
                30,
                "the observed value, over the DTLS session",
            )
            query(
                pg_url,
                "INSERT INTO lwm2m_commands (device_id, operation, path, value, created_by) "
                "SELECT id, op, path, v, 'tests' FROM devices, (VALUES "
                "('write', '/3311/0/5851', '40'), ('execute', '/3311/0/5850', NULL)) "
                "c(op, path, v) "
                "WHERE external_id = 'lw-a'",
            )
            updated = await asyncio.to_thread(dev.request, rd(location))
            assert updated.code == Code.CHANGED, updated
            await asyncio.to_thread(dev.serve, lambda: len(dev.received) >= 3)

            def states() -> list[tuple[str, str | None]]:
                return query(pg_url, "SELECT state, result_code FROM lwm2m_commands ORDER BY id")

            await wait_until(
                lambda: all(s not in ("queued", "sent") for s, _ in states()), 30, "the results"
            )
            assert svc.lwm2m is not None
            held = [(r.endpoint, r.binding) for r in svc.lwm2m.registrations.values()]

            # a new session (the device restarted its DTLS stack, new port): its Update moves
            # the registration there, and the observation is started again in it
            await asyncio.to_thread(again.handshake)
            again.temperature = b"22.75"
            updated = await asyncio.to_thread(again.request, rd(location))
            assert updated.code == Code.CHANGED, updated
            await asyncio.to_thread(again.serve, lambda: len(again.received) >= 1)
            await wait_until(
                lambda: len(query(pg_url, "SELECT 1 FROM env_readings")) == 2, 30, "re-observed"
            )
            deleted = await asyncio.to_thread(again.request, rd(location, code=Code.DELETE))
            assert deleted.code == Code.DELETED, deleted
        finally:
            dev.close()
            again.close()
    assert held == [("lw-a", "UQ")]
    assert [(c, p, b) for c, p, b in dev.received] == [
        (str(Code.GET), "/3303/0/5700", b""),
        (str(Code.PUT), "/3311/0/5851", b"40"),
        (str(Code.POST), "/3311/0/5850", b""),
    ]
    assert states() == [("done", "2.04"), ("done", "2.04")]
    assert again.received == [(str(Code.GET), "/3303/0/5700", b"")]
    assert query(pg_url, "SELECT value FROM env_readings ORDER BY time") == [(21.5,), (22.75,)]
    assert query(
        pg_url,
        "SELECT d.external_id, e.operation FROM lwm2m_registration_events e "
        "JOIN devices d ON d.id = e.device_id ORDER BY e.time",
    ) == [("lw-a", "register"), ("lw-a", "update"), ("lw-a", "update"), ("lw-a", "deregister")]
    assert query(pg_url, "SELECT deregistered_at IS NOT NULL FROM lwm2m_registrations") == [(True,)]
