"""`cityflux serve` with ``log_format = "json"``: every line on stderr is one JSON object a
log shipper can read, from start-up (migrations) through frames stored to the drain."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from tests.helpers import (
    env_messages,
    frames_stored,
    publish,
    settings_for,
    start_serve_subscribed,
    wait_until,
)


async def test_serve_writes_one_json_object_per_line(
    pg_url: str,
    broker,  # type: ignore[no-untyped-def]
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    settings = settings_for(pg_url, broker, topic_prefix)
    log = tmp_path / "serve.log"
    proc = await start_serve_subscribed(settings, log, {"CITYFLUX_LOG_FORMAT": "json"})
    try:
        assert await asyncio.to_thread(publish, broker, env_messages(topic_prefix, 2, 5)) == 10
        await wait_until(lambda: frames_stored(pg_url) == 10, 30, "10 frames stored")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert line["time"].endswith("+00:00")
    messages = [(line["level"], line["logger"], line["message"]) for line in lines]
    assert ("INFO", "storage.migrate", "storage backend: postgresql (10 telemetry tables)") in (
        messages
    )
    assert any(m[2].startswith("cityflux serving: /metrics on http://") for m in messages)
    assert ("INFO", "ingest.service", "stopped cleanly: 10 frames stored, 0 rejected") in messages
