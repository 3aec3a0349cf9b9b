"""CoAP requests/s: cityflux's CoAP path (ack after commit) vs a bare aiocoap server.

Both are driven in the same run by the same load generator in its own process
(:mod:`simulators.coap_client`: pre-encoded CON POSTs over 32 UDP sockets; 1,000 outstanding
for cityflux — a thousand devices waiting for their commit's answer — and 100 for the bare
server, its best),
light enough not to be the bottleneck (it drives a trivial UDP echo several times faster
than either server). Each request is one SenML JSON reading of a distinct device and time, so every
2.04 can be checked against the database: ``lost`` counts requests answered 2.04 whose row
is not stored.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psycopg

from ingest.service import Service
from ingest.settings import load_settings
from simulators.coap_client import send_uplinks
from storage.embedded import free_port

T0 = 1_767_225_600


def requests(n: int, run: int) -> list[tuple[str, int | None, bytes]]:
    """N single-reading SenML uplinks of 1,000 devices, distinct (device, time) each."""
    out: list[tuple[str, int | None, bytes]] = []
    for i in range(n):
        dev = f"co-{run}-{i % 1000:04d}"
        pack = [{"bn": dev, "n": "temperature", "v": 20 + i % 7, "t": T0 + 60 * (i // 1000)}]
        out.append((f"/up/env/{dev}", 110, json.dumps(pack, separators=(",", ":")).encode()))
    return out


def _drive(port: int, reqs: list[tuple[str, int | None, bytes]], window: int) -> dict[str, Any]:
    rep = send_uplinks("127.0.0.1", port, reqs, window=window, sockets=32, timeout_s=300)
    lat = sorted(rep.latencies_s)
    # the rate counts successes only (2.01/2.04): a server answering 4.xx fast is not fast
    ok = sum(n for code, n in rep.answers.items() if str(code).startswith("2."))
    return {
        "sent": rep.sent,
        "answers": dict(rep.answers),
        "unanswered": rep.unanswered,
        "retransmissions": rep.retransmissions,
        "elapsed_s": rep.elapsed_s,
        "per_s": ok / rep.elapsed_s if rep.elapsed_s else 0.0,
        "latency_p50_s": lat[len(lat) // 2] if lat else None,
        "latency_p99_s": lat[int(len(lat) * 0.99)] if lat else None,
        "answered_ids": rep.answered_ids,
    }


def _in_process(port: int, reqs: list[tuple[str, int | None, bytes]], window: int) -> Any:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_drive, port, reqs, window).result()


def bare_rate(n: int, window: int = 100) -> dict[str, Any]:
    """Requests/s of the bare aiocoap server, at the window it does best with (20-100
    outstanding; at 1,000 its default receive buffer overflows, requests are retransmitted
    and its rate halves: figures in results/coap.json)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.coap_bare", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY")
        out: dict[str, Any] = _in_process(port, requests(n, 0), window)
    finally:
        proc.terminate()
        proc.wait(10)
    out.pop("answered_ids")
    return out


async def _cityflux(
    url: str, n: int, run: int, window: int, mqtt_port: int | None
) -> dict[str, Any]:
    # the service always runs its MQTT listener: given a broker, it subscribes to a topic
    # nobody publishes to, in a session the broker forgets when it leaves (without a broker
    # it retries a closed port, and says so in the log)
    settings = load_settings(
        None,
        mqtt={
            "host": "127.0.0.1",
            "port": mqtt_port or free_port(),
            "client_id": f"coapbench-{run}-{time.time_ns()}",
            "topics": ["coapbench/idle/#"],
            "session_expiry_s": 0,
        },
        coap={"mode": "open", "port": 0},
        database={"url": url, "timescaledb": "off"},
        pipeline={"unknown_devices": "auto-provision"},
        http={"port": 0},
        log_level="WARNING",
    )
    service = Service(settings)
    task = asyncio.create_task(service.run())
    await service.started.wait()
    assert service.coap is not None
    assert service.coap.port is not None
    reqs = requests(n, run)
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = await loop.run_in_executor(
        None, _in_process, service.coap.port, reqs, window
    )
    service.stop()
    await task
    answered = out.pop("answered_ids")
    with psycopg.connect(url) as conn:
        stored = {
            (str(d), int(t.timestamp()))
            for d, t in conn.execute(
                "SELECT d.external_id, r.time FROM env_readings r JOIN devices d "
                "ON d.id = r.device_id WHERE d.external_id LIKE %s",
                (f"co-{run}-%",),
            ).fetchall()
        }
    want = {(json.loads(reqs[i][2])[0]["bn"], json.loads(reqs[i][2])[0]["t"]) for i in answered}
    out["stored"] = len(stored)
    out["lost"] = len(want - stored)
    return out


def cityflux_rate(
    url: str, n: int, run: int, window: int = 1000, mqtt_port: int | None = None
) -> dict[str, Any]:
    """Requests/s of cityflux's CoAP path, every 2.04 only after its commit; and the loss."""
    return asyncio.run(_cityflux(url, n, run, window, mqtt_port))


def run(url: str, n: int, runs: int) -> dict[str, Any]:
    """Both, ``runs`` times each; medians."""
    bare = [bare_rate(n) for _ in range(runs)]
    ours = [cityflux_rate(url, n, r) for r in range(runs)]
    med_bare = statistics.median(b["per_s"] for b in bare)
    med_ours = statistics.median(o["per_s"] for o in ours)
    return {
        "bare_aiocoap_req_per_s": med_bare,
        "cityflux_coap_req_per_s": med_ours,
        "ratio": med_ours / med_bare,
        "lost": sum(o["lost"] for o in ours),
        "cityflux_latency_p50_s": statistics.median(o["latency_p50_s"] for o in ours),
        "cityflux_latency_p99_s": statistics.median(o["latency_p99_s"] for o in ours),
        "runs": {"bare": bare, "cityflux": ours},
    }


def main() -> None:
    """Command-line entry point (the machine's PostgreSQL, a fresh database)."""
    import argparse
    import tempfile
    from pathlib import Path

    from bench.common import bench_database
    from decoders.registry import load_registry
    from storage.migrate import TimescaleMode, migrate

    ap = argparse.ArgumentParser(prog="python -m bench.coap_rates")
    ap.add_argument("--requests", type=int, default=60_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = bench_database(Path(tmp))
        try:
            migrate(url, load_registry().tables(), TimescaleMode.OFF)
            res = run(url, args.requests, args.runs)
        finally:
            drop()
    brief = {k: v for k, v in res.items() if k != "runs"}
    per_run = {
        side: [round(r["per_s"]) for r in res["runs"][side]] for side in ("bare", "cityflux")
    }
    out = Path(__file__).parent / "results" / "coap.json"
    out.write_text(json.dumps({**brief, "per_run": per_run}, indent=2) + "\n")
    print(json.dumps({**brief, "per_run": per_run}))


if __name__ == "__main__":
    main()
