"""Alerts end to end: rules on committed batches, the alerts tables, MQTT and webhook delivery
(with failures), the operators' API, restarts, hot reload, offline devices — against real
PostgreSQL, Mosquitto and HTTP."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from decoders.nbiot_env import encode_frame
from ingest.topics import uplink
from tests.helpers import (
    T0,
    api_call,
    issue_token,
    publish,
    query,
    running,
    settings_for,
    start_serve_subscribed,
    wait_until,
)

RULES = """
rules:
  - name: pm25-high
    table: env_readings
    where: metric == "pm2_5"
    when: value > 75
    clear: value < 60
    severity: critical
"""


def pm_frame(imei: int, minute: int, pm25: float, t0: int = T0) -> bytes:
    """An NB-IoT env frame at T0 + minute with this PM2.5."""
    return encode_frame(
        imei,
        t0 + minute * 60,
        minute & 0xFFFF,
        temperature=21,
        humidity=50,
        pm2_5=pm25,
        pm10=20,
        noise=40,
        battery=3600,
        rssi=-80,
    )


def msgs(prefix: str, series: list[tuple[int, int, float]], t0: int = T0) -> list[Any]:
    return [
        (uplink("env", str(imei), "nbiot-env", prefix), pm_frame(imei, m, v, t0))
        for imei, m, v in series
    ]


class Webhook:
    """A real HTTP endpoint that fails its first ``fail`` requests with 500."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if hook.fail > 0 else 200
                hook.fail -= 1
                hook.statuses.append(status)
                if status == 200:
                    hook.bodies.append(json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        return [e for b in self.bodies for e in b["events"]]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(fail=2)
    yield hook
    hook.close()


class Subscriber:
    """A real MQTT client collecting what is published under a filter."""

    def __init__(self, broker: Any, topic: str) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        ready = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            protocol=MQTTProtocolVersion.MQTTv5 if broker.v5 else MQTTProtocolVersion.MQTTv311,
        )
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, json.loads(m.payload)))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic, 1)
        self.client.loop_start()
        assert ready.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _rules(tmp_path: Path, text: str = RULES) -> Path:
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    return f


def _alert_settings(pg_url: str, broker: Any, prefix: str, rules: Path, **alerts: Any) -> Any:
    return settings_for(
        pg_url,
        broker,
        prefix,
        alerts={
            "rules_file": str(rules),
            "mqtt_topic_prefix": f"{prefix}/alerts",
            "retry_initial_ms": 50,
            "tick_s": 0.2,
            "reload_check_s": 0.2,
            **alerts,
        },
    )


async def test_alerts_are_committed_with_their_batch_and_delivered_despite_failures(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path, webhook: Webhook
) -> None:  # type: ignore[no-untyped-def]
    settings = _alert_settings(
        pg_url, broker, topic_prefix, _rules(tmp_path), webhook_urls=[webhook.url]
    )
    sub = Subscriber(broker, f"{topic_prefix}/alerts/#")
    a, b = 861000000000101, 861000000000102
    series = [(a, 0, 20.0), (b, 0, 30.0), (a, 1, 90.0), (a, 2, 70.0), (a, 3, 40.0), (b, 1, 50)]
    try:
        async with running(settings) as svc:
            assert svc.pipeline is not None
            sent = msgs(topic_prefix, series)
            for m in sent:  # one frame at a time, so frame order is arrival order
                assert await asyncio.to_thread(publish, broker, [m]) == 1
            await wait_until(lambda: svc.pipeline.stats.received == 6, what="6 frames")
            await wait_until(lambda: len(webhook.events()) == 2, what="webhook delivery")
            await wait_until(lambda: len(sub.got) == 2, what="MQTT delivery")
            port = svc.http_port or 0
            reader = functools.partial(api_call, token=issue_token(pg_url, "viewer", "read"))
            status, listed = await asyncio.to_thread(reader, port, "/api/v1/alerts?state=cleared")
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            )
    finally:
        sub.close()
    assert query(
        pg_url,
        "SELECT rule, subject, severity, state, raised_at, raised_value, cleared_at, "
        "cleared_value FROM alerts",
    ) == [
        (
            "pm25-high",
            str(a),
            "critical",
            "cleared",
            _ts(T0 + 60),
            90.0,
            _ts(T0 + 180),
            40.0,
        )
    ]
    assert [(e["event"], e["subject"], e["value"]) for e in webhook.events()] == [
        ("raised", str(a), 90.0),
        ("cleared", str(a), 40.0),
    ]
    assert webhook.statuses[:3] == [500, 500, 200]  # retried, not dropped
    assert [t for t, _ in sub.got] == [f"{topic_prefix}/alerts/critical/pm25-high/{a}"] * 2
    assert [p["event"] for _, p in sub.got] == ["raised", "cleared"]
    assert status == 200
    assert [x["subject"] for x in listed["alerts"]] == [str(a)]
    assert 'cityflux_alerts_raised_total{rule="pm25-high",severity="critical"} 1.0' in metrics
    assert 'cityflux_alerts_cleared_total{rule="pm25-high",severity="critical"} 1.0' in metrics
    assert 'cityflux_alert_deliveries_total{result="failed"' in metrics


class StrictWebhook:
    """A receiver that checks each request's signature and timestamp the way alerts/README.md
    tells receivers to, and refuses (400) any body holding an event about ``refuse``."""

    def __init__(self, secret: bytes, refuse: str) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.refused = 0
        self.bad: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stamp = self.headers.get("X-Cityflux-Timestamp", "")
                mac = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
                good = hmac.compare_digest(
                    self.headers.get("X-Cityflux-Signature", ""), f"sha256={mac}"
                )
                if not good or abs(time.time() - int(stamp)) > 300:  # a replay, or forged
                    hook.bad.append(stamp)
                    status = 401
                else:
                    events = json.loads(body)["events"]
                    status = 400 if any(e["subject"] == refuse for e in events) else 200
                    if status == 200:
                        hook.accepted += events
                    else:
                        hook.refused += 1
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def test_a_webhook_refusing_an_event_for_good_is_given_up_on_and_the_rest_delivered(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    a, b = 861000000000111, 861000000000112
    hook = StrictWebhook(b"s3cret", refuse=str(a))
    settings = _alert_settings(
        pg_url,
        broker,
        topic_prefix,
        _rules(tmp_path),
        webhook_urls=[hook.url],
        webhook_secret="s3cret",  # noqa: S106 - the test receiver's own
        webhook_give_up_after=3,
        mqtt_topic_prefix="",
    )
    try:
        async with running(settings) as svc:
            assert svc.pipeline is not None
            for m in msgs(topic_prefix, [(a, 0, 90.0), (b, 0, 95.0), (b, 1, 20.0)]):
                assert await asyncio.to_thread(publish, broker, [m]) == 1
            await wait_until(lambda: len(hook.accepted) == 2, what="b's events delivered")
    finally:
        hook.server.shutdown()
    assert [(e["event"], e["subject"]) for e in hook.accepted] == [
        ("raised", str(b)),
        ("cleared", str(b)),
    ]
    assert hook.bad == []  # every request was signed over its timestamp and body
    (raised_a,) = query(
        pg_url, "SELECT id FROM alert_events WHERE subject = %s AND event = 'raised'", str(a)
    )[0]
    assert query(
        pg_url, "SELECT sink, event_id, attempts, reason FROM alert_delivery_failures"
    ) == [(f"webhook:{hook.url}", raised_a, 3, f"webhook {hook.url} answered 400")]
    assert hook.refused >= 3


def _ts(seconds: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC)


async def test_operators_acknowledge_alerts_through_the_api(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = _alert_settings(pg_url, broker, topic_prefix, _rules(tmp_path))
    a = 861000000000201
    async with running(settings) as svc:
        assert svc.pipeline is not None
        await asyncio.to_thread(publish, broker, msgs(topic_prefix, [(a, 0, 99.0)]))
        await wait_until(lambda: svc.pipeline.stats.received == 1, what="the frame")
        port = svc.http_port or 0
        reader = functools.partial(api_call, token=issue_token(pg_url, "viewer", "read"))
        op = functools.partial(api_call, token=issue_token(pg_url, "op-1", "operate"))
        _, listed = await asyncio.to_thread(reader, port, "/api/v1/alerts")
        alert_id = listed["alerts"][0]["id"]
        ack = f"/api/v1/alerts/{alert_id}/ack"
        # who acknowledges is the token, not the body: a reader may not, a "by" is refused
        refused = await asyncio.to_thread(reader, port, ack, {"note": "on it"})
        claimed = await asyncio.to_thread(op, port, ack, {"by": "someone-else"})
        ok = await asyncio.to_thread(op, port, ack, {"note": "on it"})
        again = await asyncio.to_thread(op, port, ack, {})
        missing = await asyncio.to_thread(op, port, "/api/v1/alerts/999999/ack", {})
        _, shown = await asyncio.to_thread(reader, port, f"/api/v1/alerts/{alert_id}")
        _, rules = await asyncio.to_thread(reader, port, "/api/v1/rules")
    assert refused[0] == 403
    assert refused[1]["detail"] == "token 'viewer' has scope 'read'; this route needs 'operate'"
    assert claimed[0] == 422
    assert claimed[1]["errors"][0]["loc"] == ["body", "by"]
    assert ok[0] == 200
    assert (ok[1]["state"], ok[1]["acknowledged_by"], ok[1]["ack_note"]) == (
        "acknowledged",
        "op-1",
        "on it",
    )
    assert again == (
        409,
        {
            "type": "about:blank",
            "title": "Conflict",
            "status": 409,
            "detail": f"alert {alert_id} is acknowledged, not raised",
        },
    )
    assert (missing[0], missing[1]["detail"]) == (404, "no alert 999999")
    assert [(e["event"], e["actor"]) for e in shown["events"]] == [
        ("raised", None),
        ("acknowledged", "op-1"),
    ]
    assert query(
        pg_url,
        "SELECT actor, actor_kind, action, target, before, after FROM audit_log "
        "WHERE action = 'alert.acknowledge'",
    ) == [
        (
            "op-1",
            "token",
            "alert.acknowledge",
            str(alert_id),
            {"state": "raised"},
            {"state": "acknowledged", "note": "on it"},
        )
    ]
    assert [(r["name"], r["kind"], r["open_alerts"]) for r in rules] == [
        ("pm25-high", "threshold", 1)
    ]


async def test_a_restart_neither_reraises_nor_forgets_an_alert_or_a_pending_condition(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rules = _rules(
        tmp_path,
        RULES
        + """
  - name: pm25-sustained
    table: env_readings
    where: metric == "pm2_5"
    when: value > 75
    for: 10m
""",
    )
    settings = _alert_settings(pg_url, broker, topic_prefix, rules)
    a = 861000000000301
    async with running(settings) as svc:
        assert svc.pipeline is not None
        await asyncio.to_thread(publish, broker, msgs(topic_prefix, [(a, 0, 90.0), (a, 5, 91)]))
        await wait_until(lambda: svc.pipeline.stats.received == 2, what="first frames")
    # restarted: pm25-high stays raised (not again); pm25-sustained was pending since minute 0
    async with running(settings) as svc:
        assert svc.pipeline is not None
        await asyncio.to_thread(publish, broker, msgs(topic_prefix, [(a, 10, 92.0)]))
        await wait_until(lambda: svc.pipeline.stats.received == 1, what="after the restart")
        await asyncio.to_thread(publish, broker, msgs(topic_prefix, [(a, 11, 30.0)]))
        await wait_until(lambda: svc.pipeline.stats.received == 2, what="the clearing frame")
    rows = query(
        pg_url,
        "SELECT rule, state, extract(epoch FROM raised_at)::int - %s, raised_value FROM alerts "
        "ORDER BY rule",
        T0,
    )
    assert rows == [
        ("pm25-high", "cleared", 0, 90.0),
        ("pm25-sustained", "cleared", 600, 92.0),
    ]
    assert query(pg_url, "SELECT count(*) FROM alert_events WHERE event = 'raised'") == [(2,)]


async def test_an_invalid_rules_file_is_rejected_and_the_old_rules_stay(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rules = _rules(tmp_path)
    settings = _alert_settings(pg_url, broker, topic_prefix, rules)
    a, b = 861000000000401, 861000000000402
    async with running(settings) as svc:
        assert svc.pipeline is not None
        reloads = svc.metrics.alert_reloads
        rules.write_text(RULES.replace("value > 75", "value >>> 75"))
        os.utime(rules, (time.time() + 5, time.time() + 5))
        await wait_until(lambda: reloads.labels("error")._value.get() == 1, what="rejection")
        await asyncio.to_thread(publish, broker, msgs(topic_prefix, [(a, 0, 80.0)]))
        await wait_until(lambda: svc.pipeline.stats.received == 1, what="frame 1")
        rules.write_text(RULES.replace("value > 75", "value > 95"))
        os.utime(rules, (time.time() + 10, time.time() + 10))
        await wait_until(lambda: reloads.labels("ok")._value.get() == 1, what="the new rules")
        await asyncio.to_thread(publish, broker, msgs(topic_prefix, [(b, 0, 80.0)]))
        await wait_until(lambda: svc.pipeline.stats.received == 2, what="frame 2")
    # a raised under the old rules (80 > 75); b not under the new ones (80 < 95)
    assert query(pg_url, "SELECT subject FROM alerts") == [(str(a),)]


async def test_sighup_reloads_the_rules_of_a_running_service(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rules = _rules(tmp_path)
    settings = _alert_settings(pg_url, broker, topic_prefix, rules, reload_check_s=3600)
    log = tmp_path / "serve.log"
    proc = await start_serve_subscribed(settings, log)
    try:
        rules.write_text(RULES.replace("pm25-high", "pm25-renamed"))
        proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "1 rules reloaded" in log.read_text(), what="reload logged")
        a = 861000000000501
        await asyncio.to_thread(publish, broker, msgs(topic_prefix, [(a, 0, 80.0)]))
        await wait_until(
            lambda: query(pg_url, "SELECT rule FROM alerts") == [("pm25-renamed",)],
            what="an alert under the reloaded rule",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


async def test_an_offline_device_is_raised_by_the_clock_and_cleared_by_its_next_frame(
    pg_url: str, broker, topic_prefix: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rules = _rules(tmp_path, "rules:\n  - name: offline\n    kind: absence\n    after: 1s\n")
    settings = _alert_settings(pg_url, broker, topic_prefix, rules)
    a = 861000000000601
    now = int(time.time())
    async with running(settings) as svc:
        assert svc.pipeline is not None
        await asyncio.to_thread(publish, broker, msgs(topic_prefix, [(a, 0, 10.0)], now))
        await wait_until(
            lambda: query(pg_url, "SELECT state FROM alerts") == [("raised",)],
            what="offline after 1 s of silence",
        )
        await asyncio.to_thread(publish, broker, msgs(topic_prefix, [(a, 1, 10.0)], now))
        await wait_until(
            lambda: query(pg_url, "SELECT state FROM alerts") == [("cleared",)],
            what="back online",
        )
    rows = query(pg_url, "SELECT subject, raised_value, details->>'reason' FROM alerts")
    assert rows == [(str(a), 1.0, None)]
    assert query(pg_url, "SELECT event, details->>'reason' FROM alert_events ORDER BY id") == [
        ("raised", None),
        ("cleared", "back online"),
    ]
