"""Frame loss per device through the real broker and PostgreSQL: the simulator's drop fault
makes gaps, and the detector finds exactly the frames dropped, per device, in
``device_frame_gaps``, the hourly counts and the metric; its state survives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ingest.settings import Settings
from ingest.topics import uplink
from simulators.run import FleetRun, Target
from simulators.scenario import Scenario
from simulators.session import run_scenario
from tests.helpers import (
    api_call,
    env_frame,
    issue_token,
    publish,
    query,
    running,
    settings_for,
    wait_until,
)
from tests.integration.test_simulator import city_settings


def lossy_fleet(prefix: str) -> Scenario:
    """Three formats that number their frames; drops, duplicates and late frames (late by
    about three frames: they fill gaps counted a moment before)."""
    return Scenario.model_validate(
        {
            "name": "lossy",
            "seed": 11,
            "duration_s": 40,
            "speed": "max",
            "prefix": prefix,
            "groups": [
                {"name": "env", "model": "nbiot-env", "count": 30, "interval_s": 1},
                {"name": "lights", "model": "streetlight", "count": 20, "interval_s": 1},
                {"name": "trucks", "model": "jt808", "count": 20, "interval_s": 1},
            ],
            "faults": {"drop": 0.05, "duplicates": 0.02, "late": 0.02, "late_s": 3},
        }
    )


def sample(registry: CollectorRegistry, name: str, profile: str) -> float:
    return registry.get_sample_value(name, {"profile": profile}) or 0.0


async def test_dropped_frames_are_found_exactly_per_device(
    pg_url: str, broker: Any, topic_prefix: str
) -> None:
    settings = city_settings(pg_url, broker, topic_prefix, registry={"frame_loss_flush_s": 0.2})
    scenario = lossy_fleet(topic_prefix)
    async with running(settings) as svc:
        fleet = settings.model_copy(deep=True)
        assert svc.coap is not None
        assert svc.coap.port is not None
        fleet.coap.port = svc.coap.port
        report = await asyncio.to_thread(
            run_scenario, scenario, fleet, metrics_port=svc.http_port, do_register=True
        )
        assert report["lost"] == 0
        assert report["late_sent"] > 0
        assert report["duplicates_sent"] > 0
        dropped: dict[str, int] = report["dropped_by_device"]
        assert sum(dropped.values()) > 50
        assert svc.pipeline is not None
        assert svc.frame_loss is not None
        await svc.pipeline.wait_idle()
        loss = svc.frame_loss
        flushed = loss.flushed
        await wait_until(lambda: loss.flushed > flushed + 1, what="a frame-loss flush")
        reg = svc.metrics.registry
        ids = FleetRun(scenario, Target("127.0.0.1", 1, None, None, True, "127.0.0.1", 1)).ids
        for group, devices in zip(("env", "lights", "trucks"), ids, strict=True):
            want = sum(n for dev, n in dropped.items() if dev in set(devices))
            got = sample(reg, "cityflux_device_frames_missing_total", group) - sample(
                reg, "cityflux_device_frames_recovered_total", group
            )
            assert got == want > 0, group
        recovered = sum(
            sample(reg, "cityflux_device_frames_recovered_total", g)
            for g in ("env", "lights", "trucks")
        )
        assert recovered > 0  # late frames filled gaps counted before they came
    per_device = dict(
        query(
            pg_url,
            "SELECT d.external_id, sum(g.missing)::int FROM device_frame_gaps g "
            "JOIN devices d ON d.id = g.device_id GROUP BY 1 HAVING sum(g.missing) > 0",
        )
    )
    assert per_device == dropped
    counted = dict(
        query(
            pg_url,
            "SELECT d.external_id, sum(c.missing)::int FROM device_frame_counts c "
            "JOIN devices d ON d.id = c.device_id GROUP BY 1 HAVING sum(c.missing) > 0",
        )
    )
    assert counted == dropped
    assert report["duplicates_stored"] == 0


async def test_loss_ratio_is_shown_by_the_api_and_survives_a_restart(
    pg_url: str, broker: Any, topic_prefix: str
) -> None:
    imei = 861_770_000_000_001
    topic = uplink("env", str(imei), "nbiot-env", topic_prefix)
    settings: Settings = settings_for(
        pg_url, broker, topic_prefix, pipeline={"unknown_devices": "auto-provision"}
    )
    async with running(settings) as svc:
        assert svc.pipeline is not None
        sent = [(topic, env_frame(imei, s)) for s in (1, 2, 3, 7, 8)]  # 4-6 lost
        assert await asyncio.to_thread(publish, broker, sent) == 5
        pipe = svc.pipeline
        await wait_until(lambda: pipe.stats.stored_frames == 5, what="5 frames stored")
    # a second service reads the detector's state: frame 9 is no gap, 12 is one of 2
    async with running(settings) as svc:
        assert svc.pipeline is not None
        assert svc.http_port is not None
        sent = [(topic, env_frame(imei, s)) for s in (9, 12)]
        assert await asyncio.to_thread(publish, broker, sent) == 2
        pipe = svc.pipeline
        await wait_until(lambda: pipe.stats.stored_frames == 2, what="2 frames stored")
        loss = svc.frame_loss
        assert loss is not None
        flushed = loss.flushed
        await wait_until(lambda: loss.flushed > flushed + 1, what="a frame-loss flush")
        token = issue_token(pg_url, "loss-test", "read")
        status, body = await asyncio.to_thread(
            api_call, svc.http_port, f"/api/v1/devices/{imei}", token=token
        )
        assert status == 200, body
        assert body["frames_24h"] == {"received": 7, "missing": 5, "loss_ratio": 5 / 12}
        assert (body["external_id"], body["online"]) == (str(imei), None)  # the rest stays
    gaps = query(
        pg_url,
        "SELECT first_missing, last_missing, missing FROM device_frame_gaps g "
        "JOIN devices d ON d.id = g.device_id WHERE d.external_id = %s ORDER BY 1",
        str(imei),
    )
    assert gaps == [(4, 6, 3), (10, 11, 2)]


async def test_frame_loss_alert_opens_for_the_device_losing_frames(
    pg_url: str, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: frames-lost\n"
        "    kind: frame_loss\n"
        "    above: 0.2\n"
        "    min_frames: 5\n"
        "    check_every: 1s\n"
        "    severity: warning\n"
    )
    settings = settings_for(
        pg_url,
        broker,
        topic_prefix,
        pipeline={"unknown_devices": "auto-provision"},
        registry={"frame_loss_flush_s": 0.2},
        alerts={"rules_file": str(rules), "tick_s": 0.2, "mqtt_topic_prefix": ""},
    )
    lossy, steady = 861_770_000_000_011, 861_770_000_000_012
    sent = [
        *((uplink("env", str(lossy), "nbiot-env", topic_prefix), env_frame(lossy, s))
          for s in (1, 2, 3, 4, 9, 10)),  # 5-8 lost: 4 of 10
        *((uplink("env", str(steady), "nbiot-env", topic_prefix), env_frame(steady, s))
          for s in range(1, 11)),
    ]  # fmt: skip
    async with running(settings):
        assert await asyncio.to_thread(publish, broker, sent) == len(sent)
        await wait_until(
            lambda: bool(query(pg_url, "SELECT 1 FROM alerts WHERE rule = 'frames-lost'")),
            what="a frame-loss alert",
        )
    got = query(
        pg_url,
        "SELECT subject, state, raised_value, details->>'missing' FROM alerts "
        "WHERE rule = 'frames-lost'",
    )
    assert got == [(str(lossy), "raised", 0.4, "4")]
