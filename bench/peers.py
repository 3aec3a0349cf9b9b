"""Peers on the same one-reading workload: a naive subscriber and a published ingestor.

* naive: ``bench.naive_subscriber`` (one INSERT per message) drains a preloaded session;
* ``esphome-mqtt-timescaledb-ingestor`` 0.3.0 from PyPI (paho 1.x, psycopg2, typer), in its
  own virtualenv under the user cache (created once; it pins libraries cityflux does not
  use). It subscribes without a persistent session, so it cannot drain a preload: the
  messages are published while it runs and the figure is its storing rate (rows in its
  ``esphome_data`` table per second) over a fixed window while its queue is never empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from simulators.publisher import publish_confirmed

from .common import create_session, end_session, preload

PEER = "esphome-mqtt-timescaledb-ingestor"
PEER_VERSION = "0.3.0"


def naive_rate(port: int, url: str, msgs: Sequence[tuple[str, bytes]]) -> tuple[float, int]:
    """Messages/s of the one-INSERT-per-message subscriber, and the rows it stored."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS naive_readings (time timestamptz NOT NULL, "
            "device text NOT NULL, metric text NOT NULL, value double precision NOT NULL)"
        )
        conn.execute("TRUNCATE naive_readings")
    cid = f"naive-{time.time_ns()}"
    create_session(port, cid, "bench/up/#", 1)
    preload(port, list(msgs))
    out = subprocess.run(
        [sys.executable, "-m", "bench.naive_subscriber", str(port), cid, str(len(msgs)), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=1200,
    )
    end_session(port, cid)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM naive_readings").fetchone()
    return len(msgs) / float(out.stdout.strip()), int(row[0] if row else 0)


def peer_venv() -> Path:
    """The peer's virtualenv (created and installed from PyPI on first use)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    venv = cache / "cityflux" / "peers" / f"{PEER}-{PEER_VERSION}"
    exe = venv / "bin" / "mqtt-ingestor"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"{PEER}=={PEER_VERSION}"],
            check=True,
            capture_output=True,
        )
    return venv


def _wait_for(proc: subprocess.Popen[str], lines: list[str], needles: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 30
    while not all(any(n in line for line in lines) for n in needles):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{PEER} did not start: {''.join(lines)[-2000:]}")
        time.sleep(0.05)


def esphome_rate(
    port: int, url: str, msgs: Sequence[tuple[str, bytes]], window_s: float
) -> dict[str, Any]:
    """The peer's rows stored per second over ``window_s`` while it has a backlog."""
    venv = peer_venv()
    db = conninfo_to_dict(url)
    config = {
        "database": {
            "host": db.get("host", "127.0.0.1"),
            "port": int(db.get("port") or 5432),
            "dbname": db["dbname"],
            "user": db.get("user", "postgres"),
            "password": db.get("password", ""),
        },
        "mqtt": {"host": "127.0.0.1", "port": port, "username": "", "password": ""},
    }
    with tempfile.TemporaryDirectory(prefix="cityflux-peer-") as home:
        # typer.get_app_dir("esphome-ingestor", force_posix=True) is ~/.esphome-ingestor
        cfg = Path(home) / ".esphome-ingestor" / "ingestor_config.json"
        cfg.parent.mkdir()
        cfg.write_text(json.dumps(config))
        env = {**os.environ, "HOME": home, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [str(venv / "bin" / "mqtt-ingestor"), "start"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        try:
            _wait_for(proc, lines, ("subscribed to topics", "Database tables are ready"))
            time.sleep(0.5)  # its SUBSCRIBE goes out after the line is printed
            sent = publish_confirmed("127.0.0.1", port, msgs, qos=1, window=2000)
            counts = _sample(url, window_s)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    (t0, n0), (t1, n1) = counts[0], counts[-1]
    errors = sum("error occurred" in line for line in lines)
    return {
        "msgs_per_s": (n1 - n0) / (t1 - t0),
        "published": sent,
        "stored_in_window": n1 - n0,
        "window_s": round(t1 - t0, 2),
        "errors_logged": errors,
        "backlog_left": sent - n1,
    }


def _sample(url: str, window_s: float) -> list[tuple[float, int]]:
    """(time, rows in esphome_data) from the first stored row until ``window_s`` later."""
    out: list[tuple[float, int]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while True:
            row = conn.execute("SELECT count(*) FROM esphome_data").fetchone()
            n = int(row[0]) if row else 0
            now = time.monotonic()
            if n and not out:
                out.append((now, n))
            elif out and now - out[0][0] >= window_s:
                out.append((now, n))
                return out
            elif not out and now > deadline:
                raise RuntimeError(f"{PEER} stored nothing in 30 s")
            time.sleep(0.05)
