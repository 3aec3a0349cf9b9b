"""``cityflux bench [--quick] [--json]`` (``python -m bench``): cityflux against the machine's
limits and against peers, on the same broker and database in one run; medians of runs.

1. limits: a bare paho subscriber draining the broker (messages/s), and a raw binary COPY of
   the same rows into the same table (rows/s);
2. cityflux end to end (MQTT → decode → registry → COPY → commit → PUBACK), single-reading
   messages (the ``value`` format) and multi-reading messages (8-reading NB-IoT frames),
   QoS 0 and 1, each run's rows counted in the database (loss accounting);
3. peers on the one-reading workload: a naive one-INSERT-per-message subscriber, and
   esphome-mqtt-timescaledb-ingestor 0.3.0 from PyPI.
Without ``--quick`` it also measures each decoder and the batch writer alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from decoders.registry import load_registry
from storage.migrate import TimescaleMode, migrate

from . import copy_rates, decode_rates, mqtt_rates, peers, workloads
from .common import BenchBroker, bench_database, median_of

RESULTS = Path(__file__).parent / "results"


def _machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} "
        f"{platform.release()}, {platform.python_implementation()} {platform.python_version()}"
    )


def _e2e(
    port: int, url: str, msgs: list[tuple[str, bytes]], qos: int, readings: int, runs: int
) -> dict[str, Any]:
    """Median messages/s end to end, with each run's loss accounting."""
    accounts: list[dict[str, int]] = []

    def once() -> float:
        got = mqtt_rates.e2e_rate(port, url, msgs, qos, f"q{qos}")
        want = len(msgs) * readings
        accounts.append(
            {
                "sent": len(msgs),
                "acknowledged": len(msgs),  # the broker acknowledged every preloaded frame
                "stored_readings": got.rows_in_db,
                "lost_readings": max(0, want - got.rows_in_db),
                "lost_frames": -(-max(0, want - got.rows_in_db) // readings),
            }
        )
        return got.rate

    rate, rates = median_of(runs, once)
    return {
        "msgs_per_s": rate,
        "readings_per_s": rate * readings,
        "runs": rates,
        "accounting": accounts,
        "lost": sum(a["lost_frames"] for a in accounts),
    }


def run(quick: bool, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every figure; a dict with the issue's keys first, details below."""
    runs = 1 if quick else 3
    n_single = 30_000 if quick else 150_000
    n_multi = 15_000 if quick else 60_000
    n_naive = 3_000 if quick else 10_000
    peer_window_s = 8.0 if quick else 30.0
    single = workloads.single_reading(n_single)
    multi = workloads.multi_reading(n_multi)
    k = workloads.MULTI_READINGS
    detail: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cityflux-bench-") as tmp_s:
        tmp = Path(tmp_s)
        url, drop = bench_database(tmp)
        broker = BenchBroker(tmp / "broker")
        try:
            migrate(url, load_registry().tables(), TimescaleMode.OFF)
            log("limits: bare paho subscriber, raw binary COPY")
            for qos in (1, 0):
                detail[f"bare_qos{qos}"] = median_of(
                    runs, partial(mqtt_rates.bare_rate, broker.port, single, qos, "b")
                )
            # the multi-reading workload's rows, committed 40,000 a transaction as the
            # pipeline's 5,000-frame batches are
            rows = [copy_rates.make_batches(n_multi * k, 40_000, r) for r in range(runs)]
            it = iter(rows)
            detail["raw_copy"] = median_of(runs, lambda: copy_rates.raw_copy_rate(url, next(it)))
            log("cityflux end to end")
            for qos in (1, 0):
                detail[f"single_qos{qos}"] = _e2e(broker.port, url, single, qos, 1, runs)
                log(f"  single-reading QoS {qos} done")
                detail[f"multi_qos{qos}"] = _e2e(broker.port, url, multi, qos, k, runs)
                log(f"  multi-reading QoS {qos} done")
            detail["listener_qos1"] = median_of(
                runs, partial(mqtt_rates.listener_rate, broker.port, single, 1, "l")
            )
            log("peers: naive subscriber, esphome-mqtt-timescaledb-ingestor")
            naive = workloads.single_reading(n_naive)
            naive_stored: list[int] = []

            def naive_once() -> float:
                rate, stored = peers.naive_rate(broker.port, url, naive)
                naive_stored.append(stored)
                return rate

            detail["naive"] = median_of(runs, naive_once)
            detail["naive_stored_per_run"] = naive_stored
            try:
                peer_msgs = workloads.esphome(int(200 * peer_window_s) + 2000)
                detail["peer"] = peers.esphome_rate(broker.port, url, peer_msgs, peer_window_s)
            except Exception as exc:
                detail["peer"] = {"msgs_per_s": None, "error": f"{type(exc).__name__}: {exc}"}
            if not quick:
                log("decoders and the batch writer alone")
                detail["decoders"] = {
                    name: median_of(runs, partial(decode_rates.rate, name, batches))[0]
                    for name, batches in decode_rates.workloads(False).items()
                }
                detail["writer_vs_raw"] = {
                    "writer": median_of(runs, lambda: copy_rates.writer_rate(url, rows[0]))[0],
                    "raw": median_of(runs, lambda: copy_rates.raw_copy_rate(url, rows[0]))[0],
                }
        finally:
            broker.stop()
            drop()
    return _summary(detail, quick, runs)


def _summary(d: dict[str, Any], quick: bool, runs: int) -> dict[str, Any]:
    bare, raw = d["bare_qos1"][0], d["raw_copy"][0]
    e2e, readings = d["single_qos1"]["msgs_per_s"], d["multi_qos1"]["readings_per_s"]
    peer = d["peer"].get("msgs_per_s")
    naive = d["naive"][0]
    lost = sum(d[f"{w}_qos{q}"]["lost"] for w in ("single", "multi") for q in (0, 1))
    return {
        "e2e_msgs_per_s": e2e,
        "bare_subscriber_msgs_per_s": bare,
        "e2e_readings_per_s": readings,
        "raw_copy_rows_per_s": raw,
        "peer_msgs_per_s": peer,
        "naive_msgs_per_s": naive,
        "lost": lost,
        "e2e_vs_bare": e2e / bare,
        "readings_vs_raw_copy": readings / raw,
        "e2e_vs_peer": e2e / peer if peer else None,
        "e2e_vs_naive": e2e / naive,
        "e2e_msgs_per_s_qos0": d["single_qos0"]["msgs_per_s"],
        "e2e_readings_per_s_qos0": d["multi_qos0"]["readings_per_s"],
        "bare_subscriber_msgs_per_s_qos0": d["bare_qos0"][0],
        "listener_msgs_per_s": d["listener_qos1"][0],
        "machine": _machine(),
        "command": "cityflux bench" + (" --quick" if quick else ""),
        "runs_per_figure": runs,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "detail": d,
    }


def render(res: dict[str, Any]) -> str:
    """The figures and ratios as a short text report."""
    d = res["detail"]
    peer = res["peer_msgs_per_s"]
    lines = [
        f"machine: {res['machine']}",
        f"command: {res['command']}   runs per figure: {res['runs_per_figure']} (median)",
        "limits",
        f"  bare paho subscriber        QoS 1 {res['bare_subscriber_msgs_per_s']:>11,.0f} msg/s"
        f"   QoS 0 {res['bare_subscriber_msgs_per_s_qos0']:>11,.0f} msg/s",
        f"  raw binary COPY                   {res['raw_copy_rows_per_s']:>11,.0f} rows/s",
        "cityflux end to end (MQTT → commit → PUBACK)",
    ]
    for q in (1, 0):
        s, m = d[f"single_qos{q}"], d[f"multi_qos{q}"]
        lines.append(
            f"  QoS {q}: single-reading {s['msgs_per_s']:>9,.0f} msg/s "
            f"({s['msgs_per_s'] / d[f'bare_qos{q}'][0]:.2f} × bare)   multi-reading "
            f"{m['readings_per_s']:>9,.0f} readings/s "
            f"({m['readings_per_s'] / res['raw_copy_rows_per_s']:.2f} × raw COPY)   "
            f"lost {s['lost'] + m['lost']}"
        )
    lines += [
        f"  listener alone, QoS 1: {res['listener_msgs_per_s']:,.0f} msg/s",
        "peers (one-reading messages)",
        f"  naive one-INSERT-per-message {res['naive_msgs_per_s']:>9,.0f} msg/s  "
        f"(cityflux {res['e2e_vs_naive']:.1f} ×)",
    ]
    if peer:
        lines.append(
            f"  esphome-mqtt-timescaledb-ingestor 0.3.0 {peer:,.1f} msg/s  "
            f"(cityflux {res['e2e_vs_peer']:,.0f} ×)"
        )
    else:
        lines.append(f"  esphome-mqtt-timescaledb-ingestor: not measured ({d['peer']['error']})")
    lines.append(f"lost (acknowledged, not stored): {res['lost']}")
    if "decoders" in d:
        lines.append("decoders alone (frames/s, batches of 10,000)")
        lines += [f"  {name:<13} {r:>12,.0f}" for name, r in d["decoders"].items()]
        w = d["writer_vs_raw"]
        lines.append(
            f"batch writer {w['writer']:,.0f} rows/s vs raw COPY {w['raw']:,.0f} "
            f"({w['writer'] / w['raw']:.2f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="one run of smaller sizes (< 1 min)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where results are written")
    args = ap.parse_args(argv)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if not args.json:
            print(f"[{time.monotonic() - t0:5.1f} s] {msg}", file=sys.stderr, flush=True)

    res = run(args.quick, say)
    args.results.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    (args.results / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    text = render(res)
    (args.results / f"{name}.txt").write_text(text + "\n")
    print(json.dumps(res) if args.json else text)


if __name__ == "__main__":
    main()
