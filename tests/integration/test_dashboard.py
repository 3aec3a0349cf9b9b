"""The Grafana dashboard is proven to show data: the service runs under a simulated fleet
with faults (malformed frames, an offline group, then a burst that triggers backpressure; a
failing alert sink), a real Prometheus scrapes it with the shipped rules, and every panel's
query — template variables substituted as Grafana would — returns data over the run."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulators.scenario import Scenario
from simulators.session import run_scenario
from storage.embedded import free_port
from tests.helpers import api_call, issue_token, running, settings_for, wait_until
from tests.services import PrometheusServer

DASHBOARDS = Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards"
RATE_INTERVAL = "1m"  # Grafana's $__rate_interval at the deployed 15 s scrape interval
RULES = """
rules:
  - name: temperature-seen
    table: env_readings
    where: metric == "temperature"
    when: value > -100
    clear_after: 2s
    severity: warning
    description: every temperature reading (so that alerts open, are acknowledged and clear)
"""


def fleet(prefix: str) -> Scenario:
    """Two transports, five models (three car parks among them), malformed frames, dropped
    frames (frame loss) and an
    offline group, at twice real time (about 10 s): steady traffic Prometheus can scrape."""
    return Scenario.model_validate(
        {
            "name": "dashboard",
            "seed": 11,
            "duration_s": 20,
            "speed": 2,
            "prefix": prefix,
            "groups": [
                {"name": "env", "model": "nbiot-env", "count": 200, "interval_s": 1},
                {"name": "lights", "model": "streetlight", "count": 100, "interval_s": 2},
                {"name": "air", "model": "hj212-station", "count": 5, "interval_s": 2},
                {"name": "water", "model": "water-level", "count": 50, "interval_s": 2,
                 "transport": "coap"},
                {"name": "parking", "model": "parking-space", "count": 60, "interval_s": 2,
                 "options": {"lots": 3, "slot_s": 60}},
            ],
            "faults": {"malformed": 0.05, "offline": 0.2, "offline_after_s": 6, "drop": 0.02},
        }
    )  # fmt: skip


def burst(prefix: str) -> Scenario:
    """2,500 frames as fast as they go: past the service's in-flight limit (backpressure)."""
    return Scenario.model_validate(
        {
            "name": "burst",
            "seed": 12,
            "duration_s": 5,
            "speed": "max",
            "prefix": prefix,
            "groups": [{"name": "burst", "model": "nbiot-env", "count": 500, "interval_s": 1}],
        }
    )


def panel_queries() -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard file, panel title, target) for every target of every panel."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            out += [(path.name, panel["title"], t) for t in panel["targets"]]
    return out


def substitute(expr: str, variables: dict[str, list[str]]) -> str:
    """A panel's query as Grafana sends it with every variable at "All": multi-value
    variables become a regex alternation, ``$__rate_interval`` the deployed interval."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name, values in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${name}", "|".join(values))
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def resolve_variables(prom: PrometheusServer) -> dict[str, list[str]]:
    """Each dashboard's ``label_values(metric, label)`` variables, asked of Prometheus."""
    variables: dict[str, list[str]] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        for var in json.loads(path.read_text())["templating"]["list"]:
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            metric, label = query.removeprefix("label_values(").removesuffix(")").split(", ")
            values = prom.api(f"/api/v1/label/{label}/values", **{"match[]": metric})
            assert values, f"variable {var['name']}: {query} has no values"
            variables[var["name"]] = values
    return variables


def has_data(prom: PrometheusServer, expr: str, start: float) -> bool:
    """Whether the query has a finite value at some step since ``start`` (a time-series
    panel's query_range, as Grafana asks it)."""
    data = prom.api(
        "/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{time.time():.3f}", step="1"
    )
    return any(math.isfinite(float(v)) for series in data["result"] for _, v in series["values"])


def metric_value(svc: Any, name: str, **labels: str) -> float:
    value = svc.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def test_every_dashboard_panel_shows_data_from_a_faulty_fleet(
    pg_url: str,
    broker,  # type: ignore[no-untyped-def]
    topic_prefix: str,
    tmp_path: Path,
    prometheus: Callable[[list[str]], PrometheusServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    settings = settings_for(
        pg_url,
        broker,
        topic_prefix,
        coap={"mode": "open", "port": 0, "retry_after_s": 1},
        pipeline={"flush_interval_ms": 50, "unknown_devices": "reject", "max_inflight_frames": 200},
        registry={"status_interval_s": 1},
        alerts={
            "rules_file": str(rules),
            "mqtt_topic_prefix": f"{topic_prefix}/alerts",
            "tick_s": 0.2,
            "reload_check_s": 0.2,
            "retry_initial_ms": 50,
            "retry_max_ms": 500,
            # nothing listens there: the webhook sink fails every delivery
            "webhook_urls": [f"http://127.0.0.1:{free_port()}/hook"],
        },
    )
    caplog.set_level(logging.INFO, logger="ingest.pipeline")
    start = time.time()
    async with running(settings) as svc:
        port = svc.http_port
        assert port is not None
        assert svc.coap is not None
        assert svc.coap.port is not None
        prom = await asyncio.to_thread(prometheus, [f"127.0.0.1:{port}"])
        fleet_settings = settings.model_copy(deep=True)
        fleet_settings.coap.port = svc.coap.port
        run = asyncio.create_task(
            asyncio.to_thread(
                run_scenario,
                fleet(topic_prefix),
                fleet_settings,
                do_register=True,
                metrics_port=port,
            )
        )
        # while the fleet runs (its device time ahead of the clock: nothing clears yet), an
        # operator acknowledges an alert and reloads the rules; the alerts clear afterwards
        await wait_until(
            lambda: metric_value(svc, "cityflux_alerts_active",
                                 rule="temperature-seen", severity="warning") > 0,
            60, "an open alert",
        )  # fmt: skip
        answers = []
        ops = functools.partial(api_call, token=issue_token(pg_url, "ops", "operate"))
        for _ in range(20):  # an alert may clear between the listing and the acknowledgement
            _, listed = await asyncio.to_thread(ops, port, "/api/v1/alerts?state=raised")
            if listed["alerts"]:
                alert_id = listed["alerts"][0]["id"]
                answers.append(
                    await asyncio.to_thread(
                        ops, port, f"/api/v1/alerts/{alert_id}/ack", {"note": "seen"}
                    )
                )
                if answers[-1][0] == 200:
                    break
            await asyncio.sleep(0.1)
        assert answers[-1][0] == 200, answers
        rules.write_text(RULES + "\n")
        svc.reload_rules()
        report = await run
        burst_report = await asyncio.to_thread(
            run_scenario, burst(topic_prefix), fleet_settings, do_register=True, metrics_port=port
        )
        await wait_until(
            lambda: metric_value(svc, "cityflux_alerts_cleared_total",
                                 rule="temperature-seen", severity="warning") > 0,
            30, "alerts cleared",
        )  # fmt: skip
        await wait_until(
            lambda: metric_value(svc, "cityflux_devices", profile="env", state="offline") > 0,
            30, "env devices counted offline",
        )  # fmt: skip
        await wait_until(  # every registered lot has a sensor heard
            lambda: metric_value(svc, "cityflux_parking_lots_connected_ratio") == 1.0,
            30, "the three car parks connected",
        )  # fmt: skip

        variables = await asyncio.to_thread(resolve_variables, prom)
        queries = [(f, title, substitute(t["expr"], variables)) for f, title, t in panel_queries()]
        assert len(queries) >= 25

        def empty() -> list[str]:
            return [f"{f}: {title}: {expr}" for f, title, expr in queries
                    if not has_data(prom, expr, start)]  # fmt: skip

        deadline = time.monotonic() + 60
        while (missing := await asyncio.to_thread(empty)) and time.monotonic() < deadline:
            await asyncio.sleep(2)
        assert not missing, "panels without data:\n" + "\n".join(missing)

        # the faults happened, and the shipped recording rules ran on them
        assert any("backpressure: pausing" in r.getMessage() for r in caplog.records)
        failed = {
            s.labels["sink"]: s.value
            for fam in svc.metrics.registry.collect()
            for s in fam.samples
            if s.name == "cityflux_alert_deliveries_total" and s.labels["result"] == "failed"
        }
        assert [sink for sink, n in failed.items() if n > 0 and sink.startswith("webhook:")]
        # the dropped frames were found missing (the frame-loss panel's numbers are real)
        assert metric_value(svc, "cityflux_device_frames_missing_total", profile="env") > 0
        reasons = await asyncio.to_thread(
            prom.api, "/api/v1/query", query="cityflux:frames_rejected_by_reason:rate5m"
        )
    assert report["lost"] == burst_report["lost"] == 0, (report, burst_report)
    assert report["rejected_expected"] == report["malformed_sent"] > 0
    assert report["dropped"] > 0
    assert report["rejected_unexpected"] == 0, report["rejected_reasons"]
    assert reasons["result"], "the recording rule saw the malformed frames' dead letters"
