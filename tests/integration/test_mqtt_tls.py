"""MQTT over TLS against a real Mosquitto TLS listener, with certificates made here: the
service connects with the right CA and its client certificate, a wrong CA or an expired
certificate is refused, and a device's certificate is its identity (``use_identity_as_username``):
it publishes under its own topic and is refused on another's."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from core.mqtt import MqttConfig
from device_registry.credentials import acl_text
from ingest.topics import uplink
from storage.embedded import free_port, reachable
from tests.helpers import env_frame, frames_stored, running, settings_for, wait_until

MOSQUITTO = shutil.which("mosquitto")
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto binary")
SERVICE_USER = "cityflux-ingest"
DEVICES = ("861000000000001", "861000000000002")
NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Pki:
    """Files of a CA, the broker's certificates and clients' certificates."""

    ca: Path
    wrong_ca: Path
    server: tuple[Path, Path]
    expired_server: tuple[Path, Path]
    clients: dict[str, tuple[Path, Path]]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    *,
    server: bool,
    expired: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    start = NOW - dt.timedelta(days=10 if expired else 1)
    end = NOW - dt.timedelta(days=2) if expired else NOW + dt.timedelta(days=30)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server:  # the broker is "broker.test" (and its loopback address)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("broker.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(ca[1], hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = _ca("cityflux test CA"), _ca("somebody else's CA")
    (folder / "ca.crt").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    (folder / "wrong-ca.crt").write_bytes(other[0].public_bytes(serialization.Encoding.PEM))
    return Pki(
        ca=folder / "ca.crt",
        wrong_ca=folder / "wrong-ca.crt",
        server=_write(folder, "server", *_leaf(ca, "broker.test", server=True)),
        expired_server=_write(
            folder, "expired", *_leaf(ca, "broker.test", server=True, expired=True)
        ),
        clients={
            cn: _write(folder, f"client-{cn}", *_leaf(ca, cn, server=False))
            for cn in (SERVICE_USER, *DEVICES)
        },
    )


@dataclass(frozen=True)
class TlsBroker:
    """A private Mosquitto: a TLS listener requiring client certificates, and one whose
    certificate has expired."""

    port: int
    expired_port: int
    prefix: str


@pytest.fixture
def tls_broker(pki: Pki, tmp_path: Path, topic_prefix: str) -> Iterator[TlsBroker]:
    port, expired = free_port(), free_port()
    acl = tmp_path / "acl"
    acl.write_text(acl_text(topic_prefix, SERVICE_USER))
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"per_listener_settings false\nallow_anonymous false\nacl_file {acl}\n"
        "persistence false\n"
        + ("user root\n" if os.geteuid() == 0 else "")
        + f"listener {port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server[0]}\n"
        f"keyfile {pki.server[1]}\nrequire_certificate true\nuse_identity_as_username true\n"
        f"listener {expired} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.expired_server[0]}\n"
        f"keyfile {pki.expired_server[1]}\nrequire_certificate true\n"
        "use_identity_as_username true\n"
    )
    proc = subprocess.Popen(
        [str(MOSQUITTO), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while not (reachable("127.0.0.1", port) and reachable("127.0.0.1", expired)):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"mosquitto did not start: {err}")
            time.sleep(0.05)
        yield TlsBroker(port, expired, topic_prefix)
    finally:
        proc.terminate()
        proc.wait(10)


def _tls(pki: Pki, port: int, who: str, ca: Path | None = None) -> MqttConfig:
    cert, key = pki.clients[who]
    return MqttConfig(
        host="127.0.0.1",
        port=port,
        tls="on",
        tls_ca_file=ca or pki.ca,
        tls_cert_file=cert,
        tls_key_file=key,
        tls_server_name="broker.test",
    )


def _handshake(cfg: MqttConfig) -> ssl.SSLSocket:
    ctx = cfg.ssl_context()
    assert ctx is not None
    sock = socket.create_connection((cfg.host, cfg.port), timeout=5)
    return ctx.wrap_socket(sock, server_hostname=cfg.server_name)


def _device(pki: Pki, broker: TlsBroker, device: str) -> tuple[paho.Client, ReasonCode]:
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"dev-{device}", protocol=paho.MQTTv5
    )
    _tls(pki, broker.port, device).secure_paho(client)
    done = threading.Event()
    result: list[ReasonCode] = []
    client.on_connect = lambda c, u, f, rc, p: (result.append(rc), done.set())
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert done.wait(10), "no CONNACK"
    return client, result[0]


def test_tls_refuses_a_wrong_ca_an_expired_certificate_and_a_client_without_one(
    pki: Pki, tls_broker: TlsBroker
) -> None:
    good = _tls(pki, tls_broker.port, SERVICE_USER)
    ctx = good.ssl_context()
    assert ctx is not None
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    with _handshake(good) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _handshake(_tls(pki, tls_broker.port, SERVICE_USER, ca=pki.wrong_ca))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        _handshake(_tls(pki, tls_broker.expired_port, SERVICE_USER))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(
            _tls(pki, tls_broker.port, SERVICE_USER).model_copy(
                update={"tls_server_name": "elsewhere.test"}
            )
        )
    # the broker requires a client certificate: without one the handshake fails
    bare = MqttConfig(
        host="127.0.0.1",
        port=tls_broker.port,
        tls="on",
        tls_ca_file=pki.ca,
        tls_server_name="broker.test",
    )
    assert _refused(bare)


def _refused(cfg: MqttConfig) -> bool:
    """Whether the broker ends the connection (TLS 1.3 refuses a missing client certificate
    after the handshake, on the first read)."""
    try:
        with _handshake(cfg) as sock:
            sock.sendall(b"\x10\x00")  # a (malformed) CONNECT: anything to read an answer
            return sock.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_tls_settings_are_checked_without_touching_the_network() -> None:
    with pytest.raises(ValueError, match="tls_ca_file given but tls is off"):
        MqttConfig(tls_ca_file=Path("/nonexistent/ca.crt"))
    with pytest.raises(ValueError, match="tls_cert_file and tls_key_file go together"):
        MqttConfig(tls="on", tls_cert_file=Path("/nonexistent/c.crt"))
    MqttConfig(tls="on", tls_ca_file=Path("/nonexistent/ca.crt"))  # read when connecting


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_the_service_ingests_over_tls_and_devices_are_their_certificates(
    pki: Pki, tls_broker: TlsBroker, pg_url: str, broker, protocol: str
) -> None:  # type: ignore[no-untyped-def]
    cert, key = pki.clients[SERVICE_USER]
    settings = settings_for(
        pg_url,
        broker,
        tls_broker.prefix,
        mqtt={
            "port": tls_broker.port,
            "protocol": protocol,
            "tls": "on",
            "tls_ca_file": str(pki.ca),
            "tls_cert_file": str(cert),
            "tls_key_file": str(key),
            "tls_server_name": "broker.test",
        },
    )
    own, other = DEVICES
    async with running(settings) as svc:
        assert svc.mqtt is not None
        assert svc.mqtt.connected
        client, rc = await asyncio.to_thread(_device, pki, tls_broker, own)
        assert not rc.is_failure
        acks: dict[int, ReasonCode] = {}
        client.on_publish = lambda c, u, mid, reason, props: acks.__setitem__(mid, reason)
        mine = [
            client.publish(
                uplink("env", own, "nbiot-env", tls_broker.prefix), env_frame(int(own), s), qos=1
            )
            for s in range(3)
        ]
        theirs = client.publish(
            uplink("env", other, "nbiot-env", tls_broker.prefix), env_frame(int(other), 0), qos=1
        )
        for info in (*mine, theirs):
            await asyncio.to_thread(info.wait_for_publish, 10)
        await wait_until(lambda: frames_stored(pg_url) == 3, what="3 frames over TLS")
        await asyncio.sleep(0.3)  # room for a wrongly admitted fourth frame
        client.disconnect()
        client.loop_stop()
    assert frames_stored(pg_url) == 3
    assert all(not acks[i.mid].is_failure for i in mine)
    assert acks[theirs.mid].is_failure  # PUBACK 0x87: the certificate says who it is
