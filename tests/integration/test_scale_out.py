"""`cityflux serve --workers N`: a supervisor, N workers in one MQTT 5 shared subscription.

The broker's acknowledgements to the publisher are the reference, as in
test_delivery_guarantees.py: every frame the broker acknowledged ends stored or dead-lettered
exactly once, even when a worker is SIGKILLed with frames in flight (docs/design/0006).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import pytest

from bench.common import create_session
from ingest.settings import ConfigError, load_settings
from ingest.topics import uplink
from ingest.workers import session_exists
from tests.helpers import (
    env_frame,
    env_messages,
    frames_stored,
    publish,
    query,
    service_env,
    settings_for,
    wait_until,
)
from tests.integration.test_coap import client as coap_client
from tests.integration.test_coap import post as coap_post


def _serve_workers(env: dict[str, str], log: Path, workers: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cityflux", "serve", "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


def _pids(log: Path, index: int) -> list[int]:
    """Every pid worker ``index`` has had, from the supervisor's lines."""
    return [int(p) for p in re.findall(rf"worker {index} started \(pid (\d+)\)", log.read_text())]


def _metrics_port(log: Path, index: int) -> int:
    found = re.findall(
        rf"\[worker {index}\] ingest.service: cityflux serving: /metrics on http://[^:]+:(\d+)",
        log.read_text(),
    )
    return int(found[-1])


def _queue_depth(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return float(re.findall(r"^cityflux_queue_depth_frames (\S+)$", text, re.M)[0])


async def test_sigkill_of_one_of_two_workers_loses_no_acknowledged_frame(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Worker 1 is killed while its frames wait on a locked table: the supervisor restarts it
    on the same client id, the broker resends its unacknowledged frames to it, and every
    acknowledged frame is stored (or dead-lettered) once."""
    if not broker.v5:
        pytest.skip("shared subscriptions need MQTT 5; the amqtt fallback speaks 3.1.1")
    settings = settings_for(pg_url, broker, topic_prefix)
    log = tmp_path / "serve.log"
    proc = _serve_workers(service_env(settings), log, 2)
    try:
        await wait_until(
            lambda: log.read_text().count("subscribed to $share/") == 2, 60, "2 workers"
        )
        await wait_until(lambda: log.read_text().count("cityflux serving") == 2, 30, "2 HTTP ports")
        [victim] = _pids(log, 1)
        port = _metrics_port(log, 1)
        # 1,500 valid frames and 30 the decoder refuses, at 300/s (the killed worker's
        # session queues what the broker gives it while it is down: < 1,000, Mosquitto's
        # default max_queued_messages)
        msgs = env_messages(topic_prefix, devices=50, per_device=30)
        bad = [
            (uplink("env", str(862000000000000 + i), "nbiot-env", topic_prefix), b"\x00bad")
            for i in range(30)
        ]
        for i, m in enumerate(bad):  # odd and even places: both workers get some
            msgs.insert(49 * i + 25, m)
        sent = asyncio.create_task(asyncio.to_thread(publish, broker, msgs, 1, 300.0))
        await wait_until(lambda: frames_stored(pg_url) >= 300, 30, "300 frames stored")
        locker = await asyncio.to_thread(psycopg.connect, pg_url)
        try:  # commits wait on the lock: both workers hold frames unacknowledged
            locker.execute("LOCK TABLE env_readings IN ACCESS EXCLUSIVE MODE")
            await wait_until(lambda: _queue_depth(port) > 0, 30, "frames in flight in worker 1")
            stored_at_kill = frames_stored_nolock(locker)
            os.kill(victim, signal.SIGKILL)
            await wait_until(lambda: len(_pids(log, 1)) == 2, 30, "worker 1 restarted")
        finally:
            locker.rollback()
            locker.close()
        await wait_until(lambda: log.read_text().count("subscribed to $share/") == 3, 60, "resumed")
        resumed = r"\[worker 1\] ingest.mqtt_v5: MQTT connected .* \(session present: True\)"
        assert re.search(resumed, log.read_text())
        assert await sent == len(msgs)
        await wait_until(lambda: frames_stored(pg_url) == 1500, 60, "all 1,500 frames stored")
        await wait_until(
            lambda: query(pg_url, "SELECT count(*) FROM dead_letters") == [(30,)],
            30,
            "30 dead letters",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    text = log.read_text()
    assert f"worker 1 (pid {victim}) died (signal SIGKILL)" in text
    assert text.count("stopped cleanly") == 2
    assert stored_at_kill < 1500
    # exactly once: 8 readings per frame (the unique key refuses a second copy), one dead
    # letter per refused frame
    assert query(pg_url, "SELECT count(*) FROM env_readings") == [(1500 * 8,)]
    assert query(pg_url, "SELECT count(*), count(DISTINCT source) FROM dead_letters") == [(30, 30)]


async def test_workers_share_one_coap_port(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Both workers bind the one UDP port (SO_REUSEPORT, chosen by the supervisor for port
    0); uplinks from 24 client ports are spread over them and each is answered 2.04 after its
    commit. (The kernel hashes each client port to a socket: 24 all landing on one worker
    has a chance of 2**-23.)"""
    settings = settings_for(pg_url, broker, topic_prefix)
    env = {**service_env(settings), "CITYFLUX_COAP__MODE": "open", "CITYFLUX_COAP__PORT": "0"}
    log = tmp_path / "serve.log"
    proc = _serve_workers(env, log, 2)
    try:
        await wait_until(lambda: log.read_text().count("cityflux serving") == 2, 60, "2 workers")
        ports = set(re.findall(r"CoAP listening on coap://127.0.0.1:(\d+)", log.read_text()))
        assert len(ports) == 1
        port = int(ports.pop())
        codes = []
        for d in range(24):
            imei = 861000000000100 + d
            async with coap_client() as ctx:
                answer = await coap_post(ctx, port, f"/up/env/{imei}/nbiot-env", env_frame(imei, 1))
                codes.append(str(answer.code))
        assert codes == ["2.04 Changed"] * 24
        assert frames_stored(pg_url) == 24
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    stored = re.findall(r"\[worker (\d)\] .*stopped cleanly: (\d+) frames stored", log.read_text())
    assert sorted(i for i, _ in stored) == ["0", "1"]
    assert all(int(n) > 0 for _, n in stored)
    assert sum(int(n) for _, n in stored) == 24


async def test_fewer_workers_take_over_the_retired_workers_sessions(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The sessions two workers left (made here as they make them: persistent, subscribed
    in the shared group); frames published meanwhile are dealt to both. `serve --workers 1`
    resumes worker 0's session and retires worker 1's: it takes the frames it holds and
    deletes it, so the broker deals nothing more to it."""
    if not broker.v5:
        pytest.skip("shared subscriptions need MQTT 5; the amqtt fallback speaks 3.1.1")
    settings = settings_for(pg_url, broker, topic_prefix)
    env, log = service_env(settings), tmp_path / "serve.log"
    shared = f"$share/cityflux/{settings.mqtt.topics[0]}"
    for i in range(2):
        cid = f"{settings.mqtt.client_id}-w{i}"
        await asyncio.to_thread(create_session, broker.port, cid, shared, 1)
    first = env_messages(topic_prefix, devices=30, per_device=10)
    assert await asyncio.to_thread(publish, broker, first) == 300  # queued in both sessions
    proc = _serve_workers(env, log, 1)
    try:
        await wait_until(lambda: frames_stored(pg_url) == 300, 60, "the 300 queued frames")
        await wait_until(lambda: "earlier session retired" in log.read_text(), 30, "retired")
        later = env_messages(topic_prefix, devices=30, per_device=14)[300:]
        assert await asyncio.to_thread(publish, broker, later) == 120
        await wait_until(lambda: frames_stored(pg_url) == 420, 30, "120 frames, all to worker 0")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    text = log.read_text()
    cid = settings.mqtt.client_id
    assert f"session {cid}-w1 of an earlier run with more workers is on the broker" in text
    assert f"session {cid}-w2 of" not in text
    assert not session_exists(settings.mqtt, f"{cid}-w1")  # deleted on the broker
    assert query(pg_url, "SELECT count(*) FROM env_readings") == [(420 * 8,)]


def frames_stored_nolock(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Frames stored, read in the locking transaction (another session would wait)."""
    row = conn.execute("SELECT count(DISTINCT (device_id, time)) FROM env_readings").fetchone()
    return int(str(row[0])) if row else 0


def test_workers_refuse_alert_rules_and_mqtt_311(tmp_path: Path) -> None:
    """Several workers cannot keep a device's rule state, nor share a subscription over
    MQTT 3.1.1: the configuration is refused, naming the field and why."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(None, workers=2, alerts={"rules_file": str(rules)})
    assert str(exc.value) == (
        "invalid configuration:\n  workers: 2 workers cannot run alerts.rules_file: the rules "
        "engine keeps each device's state in one process and a shared subscription spreads a "
        "device's frames over every worker; run the rules with workers = 1 "
        "(docs/design/0006-scale-out.md) (from command line)"
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(None, workers=4, mqtt={"protocol": "3.1.1"})
    assert str(exc.value) == (
        "invalid configuration:\n  workers: 4 workers need mqtt.protocol = 5: they split the "
        "stream through an MQTT 5 shared subscription (from command line)"
    )
