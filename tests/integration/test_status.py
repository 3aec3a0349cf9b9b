"""`cityflux status` against a running service: rates and totals per transport and format,
queue and backpressure, dead letters by reason, open alerts by severity, devices online;
``--token`` is sent as a bearer token; ``--watch`` refreshes until Ctrl-C."""

from __future__ import annotations

import asyncio
import http.server
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import psycopg
import pytest

from decoders.registry import load_registry
from device_registry.profiles import load_profiles, store
from ingest.topics import uplink
from storage.migrate import TimescaleMode, migrate
from tests.helpers import (
    env_frame,
    env_messages,
    issue_token,
    publish,
    running,
    settings_for,
    wait_until,
)

CLI = [sys.executable, "-m", "cityflux", "status"]
PROFILES = Path(__file__).parents[2] / "deploy" / "registry" / "profiles.example.yaml"
RULES = """
rules:
  - name: temperature-seen
    table: env_readings
    where: metric == "temperature"
    when: value > -100
    severity: warning
    description: every temperature reading
"""


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, check=False,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )  # fmt: skip


async def test_status_shows_rates_dead_letters_alerts_and_devices(
    pg_url: str,
    broker,  # type: ignore[no-untyped-def]
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    # the city's profiles: the devices the frames provision join nbiot-env (online after 3x
    # its report interval), so the registry can count them online
    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        store(conn, load_profiles(PROFILES))
    settings = settings_for(
        pg_url, broker, topic_prefix, alerts={"rules_file": str(rules), "mqtt_topic_prefix": ""}
    )
    bad = env_frame(861000000000001, 99)
    broken = bad[:-1] + bytes([bad[-1] ^ 0xFF])  # the CRC no longer matches
    sent = env_messages(topic_prefix, 2, 10)
    msgs = (
        sent[:8] + sent[9:]  # the first device's frame 4 is lost: 1 of its 10
        + [(uplink("env", "861000000000001", "nbiot-env", topic_prefix), broken)] * 3
    )  # fmt: skip
    async with running(settings) as svc:
        assert svc.pipeline is not None
        pipe = svc.pipeline
        assert await asyncio.to_thread(publish, broker, msgs) == 22
        await wait_until(lambda: pipe.stats.stored_frames + pipe.stats.rejected == 22)
        written = svc.metrics.registry.get_sample_value
        await wait_until(
            lambda: (written("cityflux_last_seen_written_total") or 0) >= 2, 30, "last seen"
        )
        numbered = {"profile": "nbiot-env"}
        await wait_until(
            lambda: (written("cityflux_device_frames_numbered_total", numbered) or 0) == 19,
            30,
            "frame loss counted",
        )
        token = issue_token(pg_url, "status", "read")  # /api/v1 needs a read token
        out = await asyncio.to_thread(
            _status,
            "--url",
            f"http://127.0.0.1:{svc.http_port}",
            "--interval",
            "0.5",
            "--token",
            token,
        )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"^mqtt / nbiot-env\s+[\d.,]+\s+22\s*$", text, re.M), text
    assert re.search(r"^nbiot-env\s+19\s+1\s+5\.00\s+[\d.,]+\s*$", text, re.M), text
    assert re.search(r"^uncommitted frames\s+0 of 100,000\s*$", text, re.M), text
    assert re.search(r"^backpressure\s+reading\s*$", text, re.M), text
    assert re.search(r"^crc_mismatch\s+[\d.,]+\s+3\s*$", text, re.M), text
    assert re.search(r"^warning\s+2\s+0\s*$", text, re.M), text
    assert "NOT READY" not in text
    assert re.search(r"^nbiot-env\s+2\s+0\s+0\s+2\s*$", text, re.M), text


def test_status_of_an_unreachable_service_says_so_and_exits_1() -> None:
    out = _status("--url", "http://127.0.0.1:9", "--interval", "0.2")
    assert out.returncode == 1
    assert out.stderr.startswith("cityflux: cannot read http://127.0.0.1:9: ")


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in for the service's HTTP endpoint that records Authorization headers."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = {
            "/metrics": b"cityflux_queue_depth_frames 0\n",
            "/readyz": b'{"status": "ready", "checks": {"mqtt": true}}',
        }.get(self.path, b"[]")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def recorder() -> Iterator[int]:
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_status_sends_the_token_as_a_bearer_token(recorder: int) -> None:
    out = _status("--url", f"http://127.0.0.1:{recorder}", "--interval", "0.2", "--token", "s3cr")
    assert out.returncode == 0, out.stderr
    assert ("/api/v1/status", "Bearer s3cr") in _Recorder.seen
    assert ("/api/v1/alerts/summary", "Bearer s3cr") in _Recorder.seen
    _Recorder.seen = []
    out = _status("--url", f"http://127.0.0.1:{recorder}", "--interval", "0.2")
    assert out.returncode == 0, out.stderr
    assert ("/api/v1/status", None) in _Recorder.seen


def test_watch_refreshes_until_ctrl_c(recorder: int) -> None:
    proc = subprocess.Popen(
        [*CLI, "--url", f"http://127.0.0.1:{recorder}", "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while sum(p == "/metrics" for p, _ in _Recorder.seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert sum(p == "/metrics" for p, _ in _Recorder.seen) >= 4
    assert "uncommitted frames" in stdout
