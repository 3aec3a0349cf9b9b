"""``python -m bench [--quick] [--json]``: the issue-level benchmarks, medians of runs."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from storage.embedded import EmbeddedPostgres
from tests.services import reachable

from . import copy_rates, decode_rates, mqtt_rates
from .common import BenchBroker, median_of

RESULTS = Path(__file__).parent / "results"


def _database(tmp: Path) -> tuple[str, Any]:
    admin = os.environ.get("CITYFLUX_BENCH_PG_URL")
    cluster = None
    if admin is None:
        if reachable("127.0.0.1", 5432):
            admin = "postgresql://postgres@127.0.0.1:5432/postgres"
        else:
            cluster = EmbeddedPostgres(tmp / "pg").start()
            admin = cluster.url
    name = f"cityflux_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if cluster is not None:
            cluster.stop()

    return admin.rpartition("/")[0] + "/" + name, drop


def run(quick: bool) -> dict[str, Any]:
    """Run every benchmark; return the figures."""
    runs = 1 if quick else 3
    n_msgs = 30_000 if quick else 100_000
    n_rows = 200_000 if quick else 1_000_000
    out: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} cores "
        f"{platform.python_implementation()} "
        f"{platform.python_version()}",
        "runs": runs,
        "quick": quick,
        "started": time.strftime("%FT%TZ"),
    }
    loads = decode_rates.workloads(quick)
    out["decode_frames_per_s"] = {
        name: median_of(runs, partial(decode_rates.rate, name, batches))[0]
        for name, batches in loads.items()
    }
    del loads
    with tempfile.TemporaryDirectory(prefix="cityflux-bench-") as tmp_s:
        tmp = Path(tmp_s)
        url, drop = _database(tmp)
        broker = BenchBroker(tmp / "broker")
        try:
            copy_rates.prepare(url)
            batches = [copy_rates.make_batches(n_rows, 5000, r) for r in range(runs)]
            out["encode_rows_per_s"], _ = median_of(
                runs, lambda: copy_rates.encode_rate(batches[0])
            )
            raw, raws = median_of(runs, lambda: copy_rates.raw_copy_rate(url, batches[0]))
            wr, wrs = median_of(runs, lambda: copy_rates.writer_rate(url, batches[0]))
            out.update(
                raw_copy_rows_per_s=raw,
                writer_rows_per_s=wr,
                writer_vs_raw_copy=wr / raw,
                raw_copy_runs=raws,
                writer_runs=wrs,
            )
            msgs = mqtt_rates.messages(n_msgs)
            for qos in (0, 1):
                bare, bares = median_of(
                    runs, partial(mqtt_rates.bare_rate, broker.port, msgs, qos, "b")
                )
                lst, lsts = median_of(
                    runs, partial(mqtt_rates.listener_rate, broker.port, msgs, qos, "l")
                )
                results: list[int] = []

                def e2e(q: int = qos, results: list[int] = results) -> float:
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute("TRUNCATE env_readings")
                    rate, stored = mqtt_rates.e2e_rate(broker.port, url, msgs, q, "e")
                    results.append(stored)
                    return rate

                e2e_med, e2es = median_of(runs, e2e)
                out[f"qos{qos}"] = {
                    "bare_subscriber_msgs_per_s": bare,
                    "listener_msgs_per_s": lst,
                    "listener_vs_bare": lst / bare,
                    "e2e_msgs_per_s": e2e_med,
                    "e2e_vs_bare": e2e_med / bare,
                    "e2e_readings_per_s": e2e_med * 8,
                    "stored_per_run": results,
                    "lost": sum(n_msgs - s for s in results),
                    "runs": {"bare": bares, "listener": lsts, "e2e": e2es},
                }
        finally:
            broker.stop()
            drop()
    return out


def _print(res: dict[str, Any]) -> None:
    print(f"machine: {res['machine']}   runs per figure: {res['runs']} (median)")
    for name, r in res["decode_frames_per_s"].items():
        print(f"decoder {name:<12} {r:>12,.0f} frames/s (batches of 10,000)")
    print(f"binary COPY encoder:        {res['encode_rows_per_s']:>12,.0f} rows/s")
    print(f"raw binary COPY (baseline): {res['raw_copy_rows_per_s']:>12,.0f} rows/s")
    print(
        f"cityflux BatchWriter:       {res['writer_rows_per_s']:>12,.0f} rows/s  "
        f"({res['writer_vs_raw_copy']:.2f} × raw COPY)"
    )
    for q in ("qos0", "qos1"):
        r = res[q]
        print(
            f"MQTT {q}: bare paho {r['bare_subscriber_msgs_per_s']:>9,.0f} msg/s | "
            f"cityflux listener {r['listener_msgs_per_s']:>9,.0f} "
            f"({r['listener_vs_bare']:.2f} ×) | end to end {r['e2e_msgs_per_s']:>9,.0f} "
            f"({r['e2e_vs_bare']:.2f} ×, {r['e2e_readings_per_s']:,.0f} readings/s) "
            f"lost={r['lost']}"
        )


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="one run of smaller sizes")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    res = run(args.quick)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("quick.json" if args.quick else "latest.json")).write_text(
        json.dumps(res, indent=2) + "\n"
    )
    if args.json:
        print(json.dumps(res))
    else:
        _print(res)


if __name__ == "__main__":
    main()
