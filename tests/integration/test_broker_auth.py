"""Credentials exported from the registry, enforced by a real Mosquitto: a wrong password is
refused, a disabled device cannot connect, and a device cannot publish into another
device's topic."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from cityflux.cli import app
from device_registry.credentials import ITERATIONS, hash_secret
from storage.embedded import free_port, reachable

MOSQUITTO = shutil.which("mosquitto")
ITERATION_COUNTS = (101, ITERATIONS, 20_000)
pytestmark = pytest.mark.skipif(
    MOSQUITTO is None, reason="needs the mosquitto binary (the amqtt fallback has no ACL files)"
)


@pytest.fixture
def secured_broker(pg_url: str, tmp_path: Path) -> Iterator[int]:
    """A private Mosquitto that authenticates against files exported from the registry."""
    devices = tmp_path / "devices.csv"
    devices.write_text(
        "external_id,status,secret\n"
        "861000000000001,active,first-device-secret\n"
        "861000000000002,active,second-device-secret\n"
        "861000000000003,disabled,third-device-secret\n"
    )
    # mosquitto_passwd's count, ours, and more: Mosquitto 2 reads each line's own count
    hashed = tmp_path / "hashed.csv"
    hashed.write_text(
        "external_id,credential_hash\n"
        + "".join(
            f"86100000000010{i},{hash_secret(f'iterations-{n}', iterations=n)}\n"
            for i, n in enumerate(ITERATION_COUNTS)
        )
    )
    env = {
        "CITYFLUX_DATABASE__URL": pg_url,
        "CITYFLUX_LOG_LEVEL": "WARNING",
        "CITYFLUX_MQTT__USERNAME": "cityflux-ingest",
        "CITYFLUX_MQTT__PASSWORD": "ingest-secret",
    }
    runner = CliRunner()
    assert runner.invoke(app, ["devices", "import", "-q", str(devices)], env=env).exit_code == 0
    assert runner.invoke(app, ["devices", "import", "-q", str(hashed)], env=env).exit_code == 0
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    result = runner.invoke(
        app,
        ["devices", "credentials", "--password-file", str(passwd), "--acl-file", str(acl)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    # the disabled device is left out
    assert f"{2 + len(ITERATION_COUNTS)} device credentials" in result.output
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {passwd}\nacl_file {acl}\npersistence false\n"
        # as root, mosquitto would drop to its own user, which cannot read pytest's tmp dirs
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen(
        [str(MOSQUITTO), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"mosquitto did not start: {err}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _connect(port: int, user: str, password: str) -> tuple[paho.Client, ReasonCode]:
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"t-{user}-{time.monotonic_ns()}",
        protocol=paho.MQTTv5,
    )
    done = threading.Event()
    result: list[ReasonCode] = []

    def on_connect(c: paho.Client, u: object, flags: object, rc: ReasonCode, p: object) -> None:
        result.append(rc)
        done.set()

    client.on_connect = on_connect
    client.username_pw_set(user, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert done.wait(10), "no CONNACK"
    return client, result[0]


def test_passwords_and_topic_acl_are_enforced(secured_broker: int) -> None:
    port = secured_broker
    wrong, rc = _connect(port, "861000000000001", "not-the-secret")
    wrong.loop_stop()
    assert rc.is_failure
    assert rc.getName() in ("Bad user name or password", "Not authorized")
    disabled, rc = _connect(port, "861000000000003", "third-device-secret")
    disabled.loop_stop()
    assert rc.is_failure

    service, rc = _connect(port, "cityflux-ingest", "ingest-secret")
    assert not rc.is_failure
    got: list[str] = []
    subscribed = threading.Event()
    service.on_message = lambda c, u, m: got.append(m.topic)
    service.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    service.subscribe("cityflux/up/#", qos=1)
    assert subscribed.wait(10)

    device, rc = _connect(port, "861000000000001", "first-device-secret")
    assert not rc.is_failure
    acks: dict[int, ReasonCode] = {}
    device.on_publish = lambda c, u, mid, reason, props: acks.__setitem__(mid, reason)
    own = device.publish(
        "cityflux/up/env/861000000000001/nbiot-env", b"x", qos=1, properties=Properties(3)
    )
    other = device.publish("cityflux/up/env/861000000000002/nbiot-env", b"x", qos=1)
    own.wait_for_publish(10)
    other.wait_for_publish(10)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # room for a wrongly forwarded second message to arrive
    for c in (device, service):
        c.disconnect()
        c.loop_stop()
    assert got == ["cityflux/up/env/861000000000001/nbiot-env"]
    assert not acks[own.mid].is_failure
    assert acks[other.mid].is_failure  # MQTT 5: PUBACK 0x87 Not authorized


def test_mosquitto_accepts_random_salts_and_each_iteration_count(secured_broker: int) -> None:
    for i, n in enumerate(ITERATION_COUNTS):
        client, rc = _connect(secured_broker, f"86100000000010{i}", f"iterations-{n}")
        client.disconnect()
        client.loop_stop()
        assert not rc.is_failure, (n, rc)
        wrong, rc = _connect(secured_broker, f"86100000000010{i}", f"iterations-{n + 1}")
        wrong.loop_stop()
        assert rc.is_failure, n
