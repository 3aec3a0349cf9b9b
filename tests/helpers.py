"""Helpers shared by the integration tests: settings, a running service, a QoS 1 publisher."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg

from core.access import ActorKind, Principal, Scope
from decoders.nbiot_env import encode_frame
from ingest import tokens
from ingest.service import Service
from ingest.settings import Settings, load_settings
from ingest.topics import uplink
from simulators.publisher import publish_confirmed

T0 = 1_767_225_600


def settings_for(pg_url: str, broker: Any, prefix: str, **sections: dict[str, Any]) -> Settings:
    """Settings for a service on this test's database, broker and topic prefix."""
    data: dict[str, Any] = {
        "database": {"url": pg_url, "timescaledb": "off"},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "topics": [f"{prefix}/up/+/+/+/#"],
            "client_id": f"svc-{prefix}",
            "protocol": "5" if broker.v5 else "3.1.1",
        },
        "pipeline": {"flush_interval_ms": 50},
        "http": {"port": 0},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return load_settings(None, **data)


def service_env(settings: Settings) -> dict[str, str]:
    """Environment variables that configure a `cityflux serve` subprocess like ``settings``."""
    s = settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYFLUX_")}
    env.update(
        {
            "CITYFLUX_DATABASE__URL": s.database.url.get_secret_value(),
            "CITYFLUX_DATABASE__TIMESCALEDB": s.database.timescaledb.value,
            "CITYFLUX_MQTT__HOST": s.mqtt.host,
            "CITYFLUX_MQTT__PORT": str(s.mqtt.port),
            "CITYFLUX_MQTT__CLIENT_ID": s.mqtt.client_id,
            "CITYFLUX_MQTT__PROTOCOL": s.mqtt.protocol.value,
            "CITYFLUX_MQTT__TOPICS": f'["{s.mqtt.topics[0]}"]',
            "CITYFLUX_PIPELINE__FLUSH_INTERVAL_MS": str(s.pipeline.flush_interval_ms),
            "CITYFLUX_PIPELINE__BATCH_MAX_FRAMES": str(s.pipeline.batch_max_frames),
            "CITYFLUX_HTTP__PORT": "0",
        }
    )
    a = s.alerts
    if a.rules_file is not None:
        env.update(
            {
                "CITYFLUX_ALERTS__RULES_FILE": str(a.rules_file),
                "CITYFLUX_ALERTS__RELOAD_CHECK_S": str(a.reload_check_s),
                "CITYFLUX_ALERTS__TICK_S": str(a.tick_s),
                "CITYFLUX_ALERTS__MQTT_TOPIC_PREFIX": a.mqtt_topic_prefix,
            }
        )
    return env


def start_serve(
    settings: Settings, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`cityflux serve` as a real subprocess (for SIGKILL / SIGTERM tests); ``env`` adds
    variables."""
    return subprocess.Popen(
        [sys.executable, "-m", "cityflux", "serve"],
        env={**service_env(settings), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


async def start_serve_subscribed(
    settings: Settings, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`cityflux serve` as a subprocess, returned once it has subscribed (a new log line)."""
    before = log.read_text().count("subscribed") if log.exists() else 0
    proc = start_serve(settings, log, env)
    await wait_until(lambda: log.read_text().count("subscribed") > before, 30, "service subscribed")
    return proc


@asynccontextmanager
async def running(settings: Settings, **fields: Any) -> AsyncIterator[Service]:
    """A service running in this event loop until the block ends (then drained);
    ``fields`` are given to ``Service`` (e.g. ``decoders``)."""
    service = Service(settings, **fields)
    task = asyncio.create_task(service.run())
    started = asyncio.ensure_future(service.started.wait())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert service.mqtt is not None
    await service.mqtt.wait_connected(20)
    try:
        yield service
    finally:
        service.stop()
        await asyncio.wait_for(task, 60)


async def ingest(broker: Any, settings: Settings, msgs: list[tuple[str, bytes]]) -> None:
    """Run a service, publish ``msgs`` at QoS 1, return once it has received and stored (or
    dead-lettered) every one of them and drained."""
    async with running(settings) as svc:
        assert svc.pipeline is not None
        pipe = svc.pipeline
        assert await asyncio.to_thread(publish, broker, msgs) == len(msgs)
        await wait_until(lambda: pipe.stats.received == len(msgs), what=f"{len(msgs)} frames")


def env_frame(imei: int, seq: int) -> bytes:
    """The seq-th valid NB-IoT env frame of a device (distinct time per seq)."""
    return encode_frame(
        imei,
        T0 + seq * 60,
        seq & 0xFFFF,
        temperature=20 + seq % 10,
        humidity=50.0,
        pm2_5=10.0,
        pm10=20.0,
        noise=40.0,
        battery=3600,
        rssi=-80,
    )


def env_messages(
    prefix: str, devices: int, per_device: int, base_imei: int = 861000000000000
) -> list[tuple[str, bytes]]:
    """(topic, payload) of valid env frames, round-robin over devices."""
    return [
        (uplink("env", str(base_imei + d), "nbiot-env", prefix), env_frame(base_imei + d, s))
        for s in range(per_device)
        for d in range(devices)
    ]


def publish(
    broker: Any,
    messages: Iterable[tuple[str, bytes]],
    qos: int = 1,
    rate_per_s: float | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Publish and wait for the broker's PUBACKs; return how many the broker acknowledged."""
    return publish_confirmed(
        broker.host,
        broker.port,
        messages,
        v5=broker.v5,
        qos=qos,
        rate_per_s=rate_per_s,
        stop=stop,
        window=200,
        timeout_s=30,
    )


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def api_call(
    port: int,
    path: str,
    body: dict[str, Any] | None = None,
    write_method: str = "POST",
    token: str | None = None,
    method: str | None = None,
) -> tuple[int, Any]:
    """(status, JSON body) of the service's HTTP API on 127.0.0.1: a GET, or ``write_method``
    with ``body`` as JSON (``method`` forces one), with ``token`` as the bearer token."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method or (write_method if body is not None else "GET"),
        headers=headers,
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - http://127.0.0.1
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def issue_token(url: str, name: str, scope: str = "admin") -> str:
    """A new API token in a migrated database (what ``cityflux tokens create`` does)."""
    with psycopg.connect(url, autocommit=True) as conn:
        token, _ = tokens.create(conn, name, Scope(scope), Principal("tests", ActorKind.CLI))
    return token


def query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of one query on a fresh connection."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def frames_stored(url: str) -> int:
    """Distinct (device, time) pairs in env_readings: frames stored, whatever their metrics."""
    try:
        return int(query(url, "SELECT count(DISTINCT (device_id, time)) FROM env_readings")[0][0])
    except psycopg.errors.UndefinedTable:
        return 0
