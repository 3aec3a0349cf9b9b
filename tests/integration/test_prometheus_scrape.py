"""A real Prometheus (Debian's 2.x) scrapes the service and sees the same counts we do."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from storage.embedded import free_port
from tests.helpers import env_messages, publish, running, settings_for, wait_until

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None and not os.environ.get("CI"),
    reason="needs Debian's prometheus (apt-get install prometheus); .ci/run installs it",
)


def _query(port: int, expr: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]  # type: ignore[no-any-return]


async def test_prometheus_scrapes_frame_counts(
    pg_url: str,
    broker,
    topic_prefix: str,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    assert PROMETHEUS is not None, "prometheus is required in CI"
    settings = settings_for(pg_url, broker, topic_prefix)
    async with running(settings) as svc:
        assert svc.pipeline is not None
        await asyncio.to_thread(publish, broker, env_messages(topic_prefix, 5, 20))
        await wait_until(lambda: svc.pipeline.stats.received == 100, what="100 frames")
        conf = tmp_path / "prometheus.yml"
        conf.write_text(
            "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: cityflux\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{svc.http_port}']}}]\n"
        )
        port = free_port()
        prom = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={conf}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prom.log").open("wb"),
        )
        try:
            expr = 'cityflux_frames_received_total{format="nbiot-env",transport="mqtt"}'

            def scraped() -> bool:
                try:
                    return bool(_query(port, expr))
                except OSError:
                    return False

            await wait_until(scraped, 60, "Prometheus to scrape cityflux")
            result = await asyncio.to_thread(_query, port, expr)
            backend = await asyncio.to_thread(_query, port, "cityflux_storage_info")
            up = await asyncio.to_thread(_query, port, 'up{job="cityflux"}')
        finally:
            prom.terminate()
            prom.wait(10)
    assert float(result[0]["value"][1]) == 100.0  # type: ignore[index]
    assert backend[0]["metric"]["backend"] == "postgresql"  # type: ignore[index]
    assert float(up[0]["value"][1]) == 1.0  # type: ignore[index]
