"""A real Prometheus (Debian's 2.x) scrapes the service and sees the same counts we do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from tests.helpers import env_messages, publish, running, settings_for, wait_until
from tests.services import PrometheusServer


async def test_prometheus_scrapes_frame_counts(
    pg_url: str,
    broker,  # type: ignore[no-untyped-def]
    topic_prefix: str,
    tmp_path: Path,
    prometheus: Callable[[list[str]], PrometheusServer],
) -> None:
    settings = settings_for(pg_url, broker, topic_prefix)
    async with running(settings) as svc:
        assert svc.pipeline is not None
        await asyncio.to_thread(publish, broker, env_messages(topic_prefix, 5, 20))
        await wait_until(lambda: svc.pipeline.stats.received == 100, what="100 frames")
        prom = await asyncio.to_thread(prometheus, [f"127.0.0.1:{svc.http_port}"])
        expr = 'cityflux_frames_received_total{format="nbiot-env",transport="mqtt"}'

        def scraped() -> bool:
            return bool(prom.api("/api/v1/query", query=expr)["result"])

        await wait_until(scraped, 60, "Prometheus to scrape cityflux")
        result = await asyncio.to_thread(prom.api, "/api/v1/query", query=expr)
        backend = await asyncio.to_thread(prom.api, "/api/v1/query", query="cityflux_storage_info")
        up = await asyncio.to_thread(prom.api, "/api/v1/query", query='up{job="cityflux"}')
    assert float(result["result"][0]["value"][1]) == 100.0
    assert backend["result"][0]["metric"]["backend"] == "postgresql"
    assert float(up["result"][0]["value"][1]) == 1.0
