"""Live mode: a fleet publishing at its maximum while the consumer runs, beside the drain mode.

The fleet is ``publishers`` processes of Mosquitto's C publisher (``mosquitto_pub -l``, QoS 1,
1,000 in flight), each a gantry reader sending typed tag-read JSON events
(``bench/up/gantry/<reader>/tagread-json``), all started at once. The rate is the events stored
divided by the time from the first publish to the last commit:

* cityflux: the service runs in this process; the last commit is the pipeline's own clock
  (epoch µs, the same clock the bench starts);
* mq-bridge (PyPI, Rust core; :mod:`bench.mqbridge_peer`) in its own process: the last commit
  is the database's own time of the last row inserted (``stored_at``, ``clock_timestamp()``
  at insert: at most one of its batches before that batch's commit, so in the peer's
  favour); the table is polled 200 ms apart only to know when every event is in (a 10 ms
  poller of ``count(*)`` took a share of the two cores from the peer it was timing).

In the same run the fleet alone publishes into the broker with nobody subscribed: if a
consumer's rate is near that, the publisher is its bound, not the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from ingest.settings import load_settings

from .common import MissingToolError, empty, end_session, paired_ratio
from .mqbridge_peer import last_insert_us

TOPIC = "bench/up/gantry/{reader}/tagread-json"
T0_MS = 1_767_225_600_000


def fleet_files(folder: Path, publishers: int, each: int, run: int) -> list[tuple[str, Path]]:
    """One file of JSON lines per reader: distinct (reader, epc, time) events."""
    out = []
    for p in range(publishers):
        reader = f"gantry-{run:02d}{p:03d}"
        path = folder / f"{reader}.jsonl"
        with path.open("w") as f:
            for i in range(each):
                event = {
                    "reader": reader,
                    "antenna": 1 + i % 4,
                    "epc": f"E2801160{i:016X}",
                    "rssi": -50 - i % 30,
                    "first_seen": T0_MS + run * 10_000_000 + i,
                    "count": 1,
                }
                f.write(json.dumps(event, separators=(",", ":")) + "\n")
        out.append((TOPIC.format(reader=reader), path))
    return out


def _events(files: list[tuple[str, Path]]) -> int:
    """Events in the fleet's files (one a line)."""
    total = 0
    for _, path in files:
        with path.open("rb") as f:
            total += sum(1 for _ in f)
    return total


def _publisher_exe() -> str:
    exe = shutil.which("mosquitto_pub")
    if exe is None:
        raise MissingToolError("mosquitto_pub not found (Debian package mosquitto-clients)")
    return exe


def publish(port: int, files: list[tuple[str, Path]]) -> tuple[int, float]:
    """Start every publisher at once; the start (epoch µs) and seconds until the last exits."""
    exe = _publisher_exe()
    start_us = time.time_ns() // 1000
    t0 = time.perf_counter()
    procs = []
    for topic, path in files:
        cmd = [exe, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-M", "1000", "-V", "5"]
        cmd += ["-t", topic, "-l"]
        procs.append(subprocess.Popen(cmd, stdin=path.open("rb"), stderr=subprocess.PIPE))
    for proc in procs:
        proc.wait(600)
        if proc.returncode != 0:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"mosquitto_pub exited {proc.returncode}: {err}")
    return start_us, time.perf_counter() - t0


def fleet_alone(port: int, files: list[tuple[str, Path]]) -> float:
    """Events/s the fleet publishes into the broker with nobody subscribed."""
    events = _events(files)
    _, secs = publish(port, files)
    return events / secs


async def _cityflux(
    port: int, url: str, files: list[tuple[str, Path]], want: int
) -> dict[str, Any]:
    from ingest.service import Service

    cid = f"live-{time.time_ns()}"
    settings = load_settings(
        None,
        mqtt={
            "host": "127.0.0.1",
            "port": port,
            "client_id": cid,
            "topics": ["bench/up/#"],
            "qos": 1,
        },
        database={"url": url, "timescaledb": "off"},
        http={"port": 0},
        log_level="WARNING",
    )
    service = Service(settings)
    task = asyncio.create_task(service.run())
    await service.started.wait()
    assert service.pipeline is not None
    assert service.mqtt is not None
    while not service.mqtt.connected:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # subscribed
    pipe = service.pipeline
    loop = asyncio.get_running_loop()
    pub = loop.run_in_executor(None, publish, port, files)
    deadline = time.monotonic() + 600
    while pipe.stats.received < want or pipe.inflight:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    start_us, publish_s = await pub
    st = pipe.stats
    elapsed = (st.last_commit_us - start_us) / 1e6
    acked = int(getattr(service.mqtt, "pubacks_sent", st.acked))
    service.stop()
    await task
    await asyncio.to_thread(end_session, port, cid)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM vehicle_tag_reads").fetchone()
    rows = int(row[0]) if row else 0
    return {
        "events_per_s": rows / elapsed,
        "stored": rows,
        "acknowledged": acked,
        "elapsed_s": elapsed,
        "publish_s": publish_s,
        "lost": max(0, want - rows),
    }


def cityflux_live(port: int, url: str, files: list[tuple[str, Path]]) -> dict[str, Any]:
    """cityflux under the live fleet."""
    empty(url, "vehicle_tag_reads", "dead_letters")
    want = _events(files)
    return asyncio.run(_cityflux(port, url, files, want))


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def mqbridge_live(port: int, url: str, files: list[tuple[str, Path]]) -> dict[str, Any]:
    """mq-bridge under the same live fleet (its own process)."""
    try:
        import mq_bridge  # noqa: F401
    except ImportError as exc:
        raise MissingToolError("mq-bridge missing: pip install 'cityflux[bench]'") from exc
    table = "mqb_tag_reads"
    want = _events(files)
    cid = f"mqb-{time.time_ns()}"
    empty(url)  # a checkpoint, as before cityflux's run (the peer makes its own table)
    peer = subprocess.Popen(
        [sys.executable, "-m", "bench.mqbridge_peer", str(port), url, table, cid],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert peer.stdout is not None
        assert peer.stdin is not None
        if not peer.stdout.readline().startswith("READY"):
            raise RuntimeError("mq-bridge route did not start")
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(ThreadPoolExecutor(1))
            pub = pool.submit(publish, port, files)
            conn = stack.enter_context(psycopg.connect(url, autocommit=True))
            rows, stalled_since = 0, time.monotonic()
            while rows < want:  # only to know when it is over: the clock is the table's
                time.sleep(0.2)
                now = _count(conn, table)
                if now != rows:
                    rows, stalled_since = now, time.monotonic()
                elif pub.done() and time.monotonic() - stalled_since > 10:
                    break  # nothing more is coming
            start_us, publish_s = pub.result()
            last_us = last_insert_us(conn, table)
        elapsed = (last_us - start_us) / 1e6
    finally:
        if peer.stdin is not None:
            peer.stdin.close()
        peer.wait(30)
        end_session(port, cid)
    return {
        "events_per_s": rows / elapsed,
        "stored": rows,
        "elapsed_s": elapsed,
        "publish_s": publish_s,
        "lost": max(0, want - rows),
    }


def run(port: int, url: str, publishers: int, each: int, runs: int) -> dict[str, Any]:
    """Fleet alone, cityflux, mq-bridge — alternated, ``runs`` times each."""
    import statistics

    out: dict[str, list[Any]] = {"fleet_alone": [], "cityflux": [], "mq_bridge": []}
    with tempfile.TemporaryDirectory(prefix="cityflux-live-") as tmp:
        for r in range(runs):
            for side, results in out.items():
                folder = Path(tmp) / f"{side}-{r}"
                folder.mkdir()
                files = fleet_files(folder, publishers, each, r)
                if side == "fleet_alone":
                    results.append(fleet_alone(port, files))
                elif side == "cityflux":
                    results.append(cityflux_live(port, url, files))
                else:
                    try:
                        results.append(mqbridge_live(port, url, files))
                    except MissingToolError as exc:
                        results.append({"events_per_s": None, "error": str(exc)})
    fleet = statistics.median(out["fleet_alone"])
    ours = statistics.median(r["events_per_s"] for r in out["cityflux"])
    peer_rates = [r["events_per_s"] for r in out["mq_bridge"] if r.get("events_per_s")]
    peer = statistics.median(peer_rates) if peer_rates else None
    return {
        "publishers": publishers,
        "events_per_publisher": each,
        "fleet_alone_events_per_s": fleet,
        "cityflux_events_per_s": ours,
        "mq_bridge_events_per_s": peer,
        # run by run (each cityflux run against the mq-bridge run beside it), as every ratio
        "cityflux_vs_mq_bridge": paired_ratio(out["cityflux"], out["mq_bridge"], "events_per_s"),
        "cityflux_vs_fleet_alone": ours / fleet,
        "lost": sum(r["lost"] for r in out["cityflux"]),
        "mq_bridge_lost": sum(r.get("lost", 0) for r in out["mq_bridge"]),
        "runs": out,
    }


def not_run(publishers: int, each: int) -> dict[str, Any]:
    """The live figures when the fleet cannot run (no ``mosquitto_pub``): none, nothing lost."""
    return {
        "publishers": publishers,
        "events_per_publisher": each,
        "fleet_alone_events_per_s": None,
        "cityflux_events_per_s": None,
        "mq_bridge_events_per_s": None,
        "cityflux_vs_mq_bridge": None,
        "cityflux_vs_fleet_alone": None,
        "lost": 0,
        "mq_bridge_lost": 0,
        "runs": {"fleet_alone": [], "cityflux": [], "mq_bridge": []},
    }
