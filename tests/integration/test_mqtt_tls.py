"""MQTT over TLS against a real Mosquitto TLS listener, with certificates made here: the
service connects with the right CA and its client certificate, a wrong CA or an expired
certificate is refused, and a device's certificate is its identity (``use_identity_as_username``):
it publishes under its own topic and is refused on another's."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from core.mqtt import MqttConfig
from device_registry.credentials import acl_text
from ingest.topics import uplink
from tests.helpers import env_frame, frames_stored, running, settings_for, wait_until
from tests.pki import MOSQUITTO, Pki, TlsBroker, make_pki, tls_mosquitto

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs the mosquitto binary")
SERVICE_USER = "cityflux-ingest"
DEVICES = ("861000000000001", "861000000000002")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), (SERVICE_USER, *DEVICES))


@pytest.fixture
def tls_broker(pki: Pki, tmp_path: Path, topic_prefix: str) -> Iterator[TlsBroker]:
    with tls_mosquitto(pki, tmp_path, topic_prefix, acl_text(topic_prefix, SERVICE_USER)) as b:
        yield b


def _tls(pki: Pki, port: int, who: str, ca: Path | None = None) -> MqttConfig:
    return pki.mqtt(port, who, ca)


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


def test_devices_credentials_confines_certificate_devices_and_denies_disabled_ones(
    pki: Pki, pg_url: str, tmp_path: Path, topic_prefix: str
) -> None:
    from typer.testing import CliRunner

    from cityflux.cli import app

    active, disabled = DEVICES
    devices = tmp_path / "devices.csv"
    devices.write_text(
        "external_id,status,cert_fingerprint\n"
        f"{active},active,{pki.fingerprint(active)}\n"
        f"{disabled},disabled,{pki.fingerprint(disabled)}\n"
    )
    env = {
        "CITYFLUX_DATABASE__URL": pg_url,
        "CITYFLUX_LOG_LEVEL": "WARNING",
        "CITYFLUX_MQTT__TOPICS": f'["{topic_prefix}/up/+/+/+/#"]',
    }
    runner = CliRunner()
    assert runner.invoke(app, ["devices", "import", "-q", str(devices)], env=env).exit_code == 0
    passwd, acl, certs = tmp_path / "passwd", tmp_path / "acl.generated", tmp_path / "certs.csv"
    result = runner.invoke(
        app,
        [
            *("devices", "credentials", "--password-file", str(passwd)),
            *("--acl-file", str(acl), "--certificates-file", str(certs)),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "0 device credentials" in result.output  # certificates, no passwords
    assert "1 disabled devices holding a certificate: denied in the ACL" in result.output
    assert "2 certificate fingerprints" in result.output
    assert certs.read_text().splitlines() == [
        "external_id,status,cert_fingerprint",
        f"{active},active,{pki.fingerprint(active)}",
        f"{disabled},disabled,{pki.fingerprint(disabled)}",
    ]
    assert f"user {disabled}\ntopic deny #\n" in acl.read_text()
    with tls_mosquitto(pki, tmp_path, topic_prefix, acl.read_text()) as broker:
        answers: dict[str, ReasonCode] = {}
        for device in DEVICES:
            client, rc = _device(pki, broker, device)
            assert not rc.is_failure  # the certificate is valid: Mosquitto lets it connect
            acks: dict[int, ReasonCode] = {}
            client.on_publish = lambda c, u, mid, reason, props, a=acks: a.__setitem__(mid, reason)
            info = client.publish(
                uplink("env", device, "nbiot-env", topic_prefix), env_frame(int(device), 0), qos=1
            )
            info.wait_for_publish(10)
            answers[device] = acks[info.mid]
            client.disconnect()
            client.loop_stop()
    assert not answers[active].is_failure
    assert answers[disabled].is_failure  # PUBACK 0x87: denied before the patterns


def test_the_deployed_broker_config_takes_tls_devices_by_password_and_by_certificate(
    pki: Pki, tmp_path: Path, topic_prefix: str
) -> None:
    """deploy/mosquitto/mosquitto.conf as shipped, under the real Mosquitto: only its paths
    (to this test's certificates and files) and ports (free ones, on loopback) are changed."""
    import os
    import re
    import subprocess
    import time

    from device_registry.credentials import hash_secret
    from storage.embedded import free_port, reachable
    from tests.pki import MOSQUITTO as BINARY

    assert BINARY is not None
    password_device, cert_device = DEVICES
    (tmp_path / "passwd").write_text(f"{password_device}:{hash_secret('device-secret-1')}\n")
    (tmp_path / "acl").write_text(acl_text(topic_prefix, None))
    (tmp_path / "data").mkdir()
    ports = {p: free_port() for p in ("1883", "8883", "8884")}
    text = (Path(__file__).parents[2] / "deploy/mosquitto/mosquitto.conf").read_text()
    for path, local in {
        "/mosquitto/tls/ca.crt": pki.ca,
        "/mosquitto/tls/server.crt": pki.server[0],
        "/mosquitto/tls/server.key": pki.server[1],
        "/mosquitto/credentials/passwd": tmp_path / "passwd",
        "/mosquitto/credentials/acl": tmp_path / "acl",
        "/mosquitto/data/": f"{tmp_path / 'data'}/",
    }.items():
        assert path in text, path
        text = text.replace(path, str(local))
    text = re.sub(
        r"^listener (\d+)$", lambda m: f"listener {ports[m[1]]} 127.0.0.1", text, flags=re.M
    )
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(("user root\n" if os.geteuid() == 0 else "") + text)
    proc = subprocess.Popen([BINARY, "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not all(reachable("127.0.0.1", p) for p in ports.values()):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "mosquitto did not listen"
            time.sleep(0.05)
        # 8883: TLS, then user name + password
        by_password = pki.mqtt(ports["8883"], password_device).model_copy(
            update={
                "tls_cert_file": None,
                "tls_key_file": None,
                "username": password_device,
                "password": SecretStr("device-secret-1"),
            }
        )
        with _handshake(by_password) as sock:
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert _publishes(by_password, password_device, topic_prefix)
        wrong = by_password.model_copy(update={"password": SecretStr("not-the-secret")})
        assert not _publishes(wrong, password_device, topic_prefix)
        # 8884: the client certificate is the identity; none, no connection
        assert _publishes(pki.mqtt(ports["8884"], cert_device), cert_device, topic_prefix)
        assert _refused(by_password.model_copy(update={"port": ports["8884"]}))
    finally:
        proc.terminate()
        proc.wait(10)


def _publishes(cfg: MqttConfig, device: str, prefix: str) -> bool:
    """Whether ``device`` connects with ``cfg`` and its uplink is acknowledged."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"deploy-{device}", protocol=paho.MQTTv5
    )
    cfg.secure_paho(client)
    connected = threading.Event()
    codes: list[ReasonCode] = []
    client.on_connect = lambda c, u, f, rc, p: (codes.append(rc), connected.set())
    acks: dict[int, ReasonCode] = {}
    client.on_publish = lambda c, u, mid, reason, props: acks.__setitem__(mid, reason)
    client.connect(cfg.host, cfg.port)
    client.loop_start()
    try:
        assert connected.wait(10), "no CONNACK"
        if codes[0].is_failure:
            return False
        info = client.publish(uplink("env", device, "nbiot-env", prefix), b"x", qos=1)
        info.wait_for_publish(10)
        return not acks[info.mid].is_failure
    finally:
        client.disconnect()
        client.loop_stop()
