"""Scale-out drain (``python -m bench.scaleout``): ``cityflux serve --workers N`` for N = 1, 2,
4 over one preloaded QoS 1 backlog; drain rate and per-worker efficiency
rate_N / (N × rate_1). Writes bench/results/scaleout.json (docs/design/0006-scale-out.md).

Method, for each N, ``runs`` times (the median is reported, every run kept):
1. a fresh database on the bench's server, the bench's private Mosquitto (it queues up to a
   million messages per session);
2. ``cityflux serve --workers N`` in its own process group, every worker subscribed with a
   fresh client id to ``$share/<run>/bench/up/#`` (N = 1 too, so every N takes the same
   path through the broker);
3. the whole group stopped (SIGSTOP), then ``frames`` 8-reading NB-IoT frames published at
   QoS 1 and acknowledged by the broker, which deals them out round robin, frames/N per
   worker, held in the sessions (and the sockets' buffers);
4. SIGCONT starts the clock; it stops when the workers' acknowledgements
   (``cityflux_frames_acknowledged_total``, sent only after commit, summed over their
   /metrics and polled every 20 ms) reach ``frames``;
5. SIGTERM (drain), then the readings are counted in the database: nothing may be lost.

Start-up is not timed: every worker runs and is subscribed before the backlog exists. With
fewer cores than N workers + PostgreSQL + the broker, the curve bends; the efficiency says
by how much.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from storage.embedded import free_port

from . import workloads
from .common import BenchBroker, bench_database, preload

RESULTS = Path(__file__).parent / "results"
TOPIC = f"{workloads.PREFIX}/up/+/+/+/#"
POLL_S = 0.02
_ACKED = re.compile(r'^cityflux_frames_acknowledged_total\{transport="mqtt"\} (\S+)$', re.M)


def _acked(ports: Sequence[int]) -> int:
    """Frames the workers have acknowledged (after their commits), summed."""
    total = 0.0
    for port in ports:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            found = _ACKED.findall(resp.read().decode())
        total += float(found[0]) if found else 0.0
    return int(total)


def stored_rate(readings: int, elapsed_s: float) -> float:
    """Frames/s of what the database holds (a run that stored less reports less; the
    acknowledgements that stop the clock also count dead-lettered and redelivered frames)."""
    return readings / workloads.MULTI_READINGS / elapsed_s


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def drain_once(
    broker_port: int, url: str, msgs: list[tuple[str, bytes]], workers: int, work: Path
) -> dict[str, Any]:
    """One drain of ``msgs`` by ``workers`` workers: seconds, frames/s and the accounting."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('env_readings')").fetchone() != (None,):
            conn.execute("TRUNCATE env_readings, dead_letters")
    run = f"so{workers}-{uuid.uuid4().hex[:8]}"
    http = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYFLUX_")}
    env.update(
        {
            "CITYFLUX_DATABASE__URL": url,
            "CITYFLUX_DATABASE__TIMESCALEDB": "off",
            "CITYFLUX_MQTT__PORT": str(broker_port),
            "CITYFLUX_MQTT__CLIENT_ID": run,
            "CITYFLUX_MQTT__SHARED_GROUP": run,
            "CITYFLUX_MQTT__TOPICS": json.dumps([TOPIC]),
            "CITYFLUX_HTTP__PORT": str(http),
            "CITYFLUX_LOG_LEVEL": "INFO",
        }
    )
    log = work / f"{run}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cityflux", "serve", "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,  # its own process group: SIGSTOP/SIGCONT reach every worker
    )
    ports = [http + i for i in range(workers)]
    try:
        _wait(lambda: log.read_text().count("subscribed to $share/") == workers, 120, "workers")
        _wait(lambda: log.read_text().count("cityflux serving") == workers, 60, "HTTP ports")
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            preload(broker_port, msgs)
        finally:
            start = time.perf_counter()
            os.killpg(proc.pid, signal.SIGCONT)
        n = len(msgs)
        deadline = start + 600
        acked = 0
        while acked < n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"drain of {n} frames by {workers} workers: {acked} after 600 s")
            time.sleep(POLL_S)
            acked = _acked(ports)
        elapsed = time.perf_counter() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(120)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM env_readings").fetchone()
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
    readings = int(row[0]) if row else 0
    want = n * workloads.MULTI_READINGS
    return {
        "seconds": elapsed,
        "frames_per_s": stored_rate(readings, elapsed),
        "sent": n,
        "acknowledged": acked,
        "stored_readings": readings,
        "dead_letters": int(dead[0]) if dead else 0,
        "lost_frames": -(-max(0, want - readings) // workloads.MULTI_READINGS),
        "exit_code": code,
    }


def run(
    frames: int, counts: Sequence[int], runs: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Drain rate per worker count (median of ``runs``) and per-worker efficiency."""
    msgs = workloads.multi_reading(frames)
    out: dict[str, Any] = {
        "method": "preloaded QoS 1 backlog in a shared subscription; SIGCONT to last ack",
        "frames": frames,
        "readings_per_frame": workloads.MULTI_READINGS,
        "cores": os.cpu_count(),
        "workers": {},
    }
    with tempfile.TemporaryDirectory(prefix="cityflux-scaleout-") as tmp:
        work = Path(tmp)
        broker = BenchBroker(work / "broker")
        url, drop = bench_database(work)
        try:
            for n in counts:
                each = []
                for i in range(runs):
                    got = drain_once(broker.port, url, msgs, n, work)
                    log(f"workers={n} run {i + 1}: {got['frames_per_s']:,.0f} frames/s")
                    each.append(got)
                rate = statistics.median(r["frames_per_s"] for r in each)
                out["workers"][str(n)] = {
                    "frames_per_s": rate,
                    "readings_per_s": rate * workloads.MULTI_READINGS,
                    "runs": each,
                    "lost": sum(r["lost_frames"] for r in each),
                }
        finally:
            broker.stop()
            drop()
    base = out["workers"].get("1", {}).get("frames_per_s")
    for n, fig in out["workers"].items():
        fig["efficiency"] = fig["frames_per_s"] / (int(n) * base) if base else None
    return out


def main() -> None:
    """``python -m bench.scaleout [--frames N] [--workers 1,2,4] [--runs R]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--frames", type=int, default=200_000, help="backlog size (frames)")
    ap.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    ap.add_argument("--runs", type=int, default=3, help="runs per worker count (median)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where scaleout.json goes")
    args = ap.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    res = run(args.frames, counts, args.runs)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "scaleout.json").write_text(json.dumps(res, indent=2) + "\n")
    for n, fig in res["workers"].items():
        eff = fig["efficiency"]
        print(
            f"workers={n}: {fig['frames_per_s']:,.0f} frames/s "
            f"({fig['readings_per_s']:,.0f} readings/s), efficiency "
            f"{eff:.2f}, lost {fig['lost']}"
            if eff is not None
            else f"workers={n}: {fig['frames_per_s']:,.0f} frames/s, lost {fig['lost']}"
        )


if __name__ == "__main__":
    main()
