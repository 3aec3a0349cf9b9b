"""``cityflux bench [--quick] [--json] [--plot]`` (``python -m bench``): cityflux against the
machine's true limits and against peers, on the same broker and database in one run; each figure
the median of several runs, each run paired with its own same-run limit.

1. limits: Mosquitto's C client (``mosquitto_sub``) draining the same preloaded session;
   raw binary COPY over as many connections as the pipeline's writers; libcoap's C CoAP
   server under the same client load (:mod:`bench.limits`);
2. cityflux drain (MQTT → decode → registry → COPY → commit → PUBACK): single-reading and
   8-reading messages, QoS 1 and 0; the clock is the pipeline's own (first frame taken → last
   commit), ``acknowledged`` the PUBACKs the service wrote, rows counted in the database;
3. live: a fleet of C publishers at its maximum while cityflux runs, and mq-bridge (Rust
   core, PyPI) on the same typed-JSON fleet (:mod:`bench.live`);
4. CoAP: cityflux's CoAP listener (answer after commit) against libcoap's server;
5. baselines: a naive one-INSERT-per-message subscriber, and esphome-mqtt-timescaledb-ingestor
   0.3.0 (design-capped at ~100 rows/s: a baseline, not a limit).
Each run appends its figures to ``results/history.jsonl``; ``--plot`` draws them over commits.
Without ``--quick`` it also measures each decoder and the batch writer alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from decoders.registry import load_registry
from storage.migrate import TimescaleMode, migrate

from . import (
    coap_rates,
    copy_rates,
    decode_rates,
    history,
    limits,
    live,
    mqtt_rates,
    peers,
    workloads,
)
from .common import (
    BenchBroker,
    MissingToolError,
    bench_database,
    median_of,
    paired_ratio,
    service_settings,
)

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent


def _machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} "
        f"{platform.release()}, {platform.python_implementation()} {platform.python_version()}"
    )


def _drain(
    port: int, url: str, msgs: list[tuple[str, bytes]], qos: int, readings: int, tag: str
) -> dict[str, Any]:
    """One cityflux drain with its accounting. The rates are of what the database holds
    afterwards (a run that stored less reports less), over the pipeline's own clock."""
    got = mqtt_rates.e2e_rate(port, url, msgs, qos, tag)
    want = len(msgs) * readings
    return {
        "msgs_per_s": got.rows_in_db / readings / got.elapsed_s,
        "readings_per_s": got.rows_in_db / got.elapsed_s,
        "sent": len(msgs),
        "acknowledged": got.acknowledged if qos else None,  # QoS 0 has no acknowledgements
        "stored_readings": got.rows_in_db,
        "lost_readings": max(0, want - got.rows_in_db),
        "lost_frames": -(-max(0, want - got.rows_in_db) // readings),
    }


def pipeline_writers() -> int:
    """The writer connections the drained service will have: its settings are loaded as the
    drains load them (the environment's ``CITYFLUX_DATABASE__WRITERS`` included), so the raw
    COPY limit runs on as many connections, not on the default's."""
    return service_settings().database.writers


def _med(values: list[float]) -> float:
    return float(statistics.median(values))


def run(quick: bool, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every figure; a dict with the issue's keys first, details below."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs = 1 if quick else 5  # the VM swings ±20 % run to run: medians of five
    n_single = 20_000 if quick else 200_000
    n_multi = 10_000 if quick else 60_000
    n_naive = 3_000 if quick else 10_000
    live_pubs, live_each = (2, 5_000) if quick else (4, 50_000)
    n_coap = 5_000 if quick else 60_000
    peer_window_s = 8.0 if quick else 30.0
    writers = pipeline_writers()
    single = workloads.single_reading(n_single)
    multi = workloads.multi_reading(n_multi)
    k = workloads.MULTI_READINGS
    d: dict[str, Any] = {"runs": {}, "missing": {}}
    per_run: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cityflux-bench-") as tmp_s:
        tmp = Path(tmp_s)
        url, drop = bench_database(tmp)
        broker: BenchBroker | None = None
        try:
            broker = BenchBroker(tmp / "broker")  # inside: a broker that fails drops the database
            migrate(url, load_registry().tables(), TimescaleMode.OFF)
            copy_rows = [copy_rates.make_batches(n_multi * k, 40_000, r) for r in range(runs)]
            for r in range(runs):
                log(f"run {r + 1}/{runs}: C client, cityflux drain, raw COPY ({writers} conns)")
                one: dict[str, Any] = {}
                for qos in (1, 0):
                    try:
                        one[f"c_client_qos{qos}"] = limits.c_client_rate(
                            broker.port, single, qos, f"{r}"
                        )
                    except MissingToolError as exc:
                        one[f"c_client_qos{qos}"] = None
                        d["missing"]["C client"] = str(exc)
                    one[f"single_qos{qos}"] = _drain(broker.port, url, single, qos, 1, f"s{r}")
                    one[f"multi_qos{qos}"] = _drain(broker.port, url, multi, qos, k, f"m{r}")
                one["raw_copy"] = limits.raw_copy_rate(url, copy_rows[r], writers)
                per_run.append(one)
            log(f"live: {live_pubs} C publishers × {live_each:,}, cityflux and mq-bridge")
            try:
                d["live"] = live.run(broker.port, url, live_pubs, live_each, runs)
            except MissingToolError as exc:  # the fleet itself is mosquitto_pub
                d["live"] = live.not_run(live_pubs, live_each)
                d["missing"]["live fleet"] = str(exc)
            log("CoAP: cityflux listener vs libcoap's C server, same client load")
            d["coap"] = _coap(url, n_coap, runs, broker.port)
            d["listener_qos1"] = median_of(
                runs, lambda: mqtt_rates.listener_rate(broker.port, single, 1, "l")
            )
            log("baselines: naive subscriber, esphome-mqtt-timescaledb-ingestor (design-capped)")
            naive = workloads.single_reading(n_naive)
            naive_stored: list[int] = []

            def naive_once() -> float:
                rate, stored = peers.naive_rate(broker.port, url, naive)
                naive_stored.append(stored)
                return rate

            d["naive"] = median_of(runs, naive_once)
            d["naive_stored_per_run"] = naive_stored
            try:
                peer_msgs = workloads.esphome(int(200 * peer_window_s) + 2000)
                d["esphome"] = peers.esphome_rate(broker.port, url, peer_msgs, peer_window_s)
            except Exception as exc:
                d["esphome"] = {"msgs_per_s": None, "error": f"{type(exc).__name__}: {exc}"}
            if not quick:
                log("decoders and the batch writer alone")
                d["decoders"] = {
                    name: median_of(runs, partial(decode_rates.rate, name, batches))[0]
                    for name, batches in decode_rates.workloads(False).items()
                }
                d["writer_vs_raw"] = {
                    "writer": median_of(runs, lambda: copy_rates.writer_rate(url, copy_rows[0]))[0],
                    "raw_1_conn": limits.raw_copy_rate(url, copy_rows[0], 1),
                }
        finally:
            if broker is not None:
                broker.stop()
            drop()
    d["runs"] = per_run
    return _summary(d, quick, runs, writers, started)


def _coap(url: str, n: int, runs: int, mqtt_port: int) -> dict[str, Any]:
    """cityflux's CoAP listener and libcoap's server, alternated, same client load."""
    ours, theirs = [], []
    for r in range(runs):
        try:
            theirs.append(limits.libcoap_rate(n, window=1000))
        except MissingToolError as exc:
            theirs.append({"per_s": None, "error": str(exc)})
        ours.append(coap_rates.cityflux_rate(url, n, r, window=1000, mqtt_port=mqtt_port))
    limit = [t["per_s"] for t in theirs if t.get("per_s")]
    med_ours = _med([o["per_s"] for o in ours])
    med_limit = _med(limit) if limit else None
    return {
        "cityflux_req_per_s": med_ours,
        "libcoap_req_per_s": med_limit,
        "ratio": paired_ratio(ours, theirs, "per_s"),  # run by run, as every ratio
        "lost": sum(o["lost"] for o in ours),
        "runs": {"cityflux": ours, "libcoap": theirs},
    }


def _summary(
    d: dict[str, Any], quick: bool, runs: int, writers: int, started: str
) -> dict[str, Any]:
    pr = d["runs"]

    def med(key: str, field: str | None = None) -> float | None:
        values = [r[key] if field is None else r[key][field] for r in pr]
        return None if None in values else _med(values)  # None: a limit not installed

    def ratio(
        num: Callable[[dict[str, Any]], float], den: Callable[[dict[str, Any]], float | None]
    ) -> float | None:
        pairs = [(num(r), den(r)) for r in pr]
        if any(limit is None for _, limit in pairs):
            return None
        return _med([ours / limit for ours, limit in pairs if limit])  # each run, its own limit

    drains = [r[f"{w}_qos{q}"] for r in pr for w in ("single", "multi") for q in (0, 1)]
    lost = sum(x["lost_frames"] for x in drains) + d["live"]["lost"] + d["coap"]["lost"]
    acked = [r["single_qos1"]["acknowledged"] + r["multi_qos1"]["acknowledged"] for r in pr]
    sent = [r["single_qos1"]["sent"] + r["multi_qos1"]["sent"] for r in pr]
    lv, co = d["live"], d["coap"]
    esphome = d["esphome"].get("msgs_per_s")
    missing = dict(d["missing"])  # limits and peers not installed, each with its package
    for what, tried in (
        ("libcoap", co.get("runs", {}).get("libcoap", [])),
        ("mq-bridge", lv.get("runs", {}).get("mq_bridge", [])),
    ):
        errors = [t["error"] for t in tried if isinstance(t, dict) and t.get("error")]
        if errors:
            missing.setdefault(what, errors[0])
    return {
        "e2e_msgs_per_s": med("single_qos1", "msgs_per_s"),
        "c_client_msgs_per_s": med("c_client_qos1"),
        "drain_vs_c_client": ratio(
            lambda r: r["single_qos1"]["msgs_per_s"], lambda r: r["c_client_qos1"]
        ),
        "e2e_msgs_per_s_qos0": med("single_qos0", "msgs_per_s"),
        "c_client_msgs_per_s_qos0": med("c_client_qos0"),
        "drain_vs_c_client_qos0": ratio(
            lambda r: r["single_qos0"]["msgs_per_s"], lambda r: r["c_client_qos0"]
        ),
        "e2e_readings_per_s": med("multi_qos1", "readings_per_s"),
        "raw_copy_rows_per_s": med("raw_copy"),
        "raw_copy_connections": writers,
        "multi_vs_raw_copy": ratio(
            lambda r: r["multi_qos1"]["readings_per_s"], lambda r: r["raw_copy"]
        ),
        "live_events_per_s": lv["cityflux_events_per_s"],
        "mq_bridge_events_per_s": lv["mq_bridge_events_per_s"],
        "live_vs_mq_bridge": lv["cityflux_vs_mq_bridge"],
        "fleet_alone_events_per_s": lv["fleet_alone_events_per_s"],
        "live_vs_fleet_alone": lv["cityflux_vs_fleet_alone"],
        "coap_req_per_s": co["cityflux_req_per_s"],
        "libcoap_req_per_s": co["libcoap_req_per_s"],
        "coap_vs_libcoap": co["ratio"],
        "listener_msgs_per_s": d["listener_qos1"][0],
        "naive_msgs_per_s": d["naive"][0],
        "esphome_msgs_per_s": esphome,
        "acknowledged": sum(acked),
        "sent_qos1": sum(sent),
        "lost": lost,
        "machine": _machine(),
        "command": "cityflux bench" + (" --quick" if quick else ""),
        "runs_per_figure": runs,
        "started": started,
        "missing": missing,
        "detail": d,
    }


def _x(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def render(res: dict[str, Any]) -> str:
    """The figures and ratios as a short text report; a limit or peer not installed is n/a."""
    d = res["detail"]
    lines = [
        f"machine: {res['machine']}",
        f"command: {res['command']}   runs: {res['runs_per_figure']} (medians; ratios per run)",
        "drain (preloaded session)                     rate          limit (same run)    ratio",
        f"  single-reading QoS 1  {res['e2e_msgs_per_s']:>12,.0f} msg/s  C client "
        f"{_x(res['c_client_msgs_per_s'], '>9,.0f')}   {_x(res['drain_vs_c_client'])}",
        f"  single-reading QoS 0  {res['e2e_msgs_per_s_qos0']:>12,.0f} msg/s  C client "
        f"{_x(res['c_client_msgs_per_s_qos0'], '>9,.0f')}   {_x(res['drain_vs_c_client_qos0'])}",
        f"  multi-reading QoS 1   {res['e2e_readings_per_s']:>12,.0f} rows/s raw COPY×"
        f"{res['raw_copy_connections']} {res['raw_copy_rows_per_s']:>9,.0f}   "
        f"{res['multi_vs_raw_copy']:.2f}",
        f"  acknowledged (PUBACKs the service wrote, QoS 1): {res['acknowledged']:,} of "
        f"{res['sent_qos1']:,}",
        f"live ({d['live']['publishers']} C publishers at their maximum, typed tag-read JSON)",
        f"  cityflux {_x(res['live_events_per_s'], '>10,.0f')} events/s   mq-bridge "
        f"{_x(res['mq_bridge_events_per_s'], ',.0f')}   ratio {_x(res['live_vs_mq_bridge'])}   "
        f"fleet alone {_x(res['fleet_alone_events_per_s'], ',.0f')} (cityflux "
        f"{_x(res['live_vs_fleet_alone'])} of it)",
        "CoAP (confirmable, 1,000 outstanding, 32 sockets)",
        f"  cityflux {res['coap_req_per_s']:>10,.0f} req/s   libcoap coap-server "
        f"{_x(res['libcoap_req_per_s'], ',.0f')}   ratio {_x(res['coap_vs_libcoap'])}",
        f"listener alone (no database), QoS 1: {res['listener_msgs_per_s']:,.0f} msg/s",
        "baselines (not limits)",
        f"  naive one-INSERT-per-message subscriber {res['naive_msgs_per_s']:,.0f} msg/s",
        f"  esphome-mqtt-timescaledb-ingestor 0.3.0 (design-capped) "
        f"{_x(res['esphome_msgs_per_s'], ',.1f')} msg/s",
        f"lost (acknowledged or answered, not stored): {res['lost']}",
    ]
    for what, why in res.get("missing", {}).items():
        lines.append(f"n/a: {what}: {why}")
    if "decoders" in d:
        lines.append("decoders alone (frames/s, batches of 10,000)")
        lines += [f"  {name:<13} {r:>12,.0f}" for name, r in d["decoders"].items()]
        w = d["writer_vs_raw"]
        lines.append(
            f"batch writer {w['writer']:,.0f} rows/s vs raw COPY on one connection "
            f"{w['raw_1_conn']:,.0f} ({w['writer'] / w['raw_1_conn']:.2f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--quick", action="store_true", help="one run of smaller sizes (~1 min)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where results are written")
    ap.add_argument(
        "--plot",
        nargs="?",
        const=Path(),  # no path given: history.png beside the history it draws
        type=Path,
        help="draw RESULTS/history.jsonl over commits as a PNG (default RESULTS/history.png)",
    )
    args = ap.parse_args(argv)
    if args.plot is not None:
        png = args.plot if args.plot != Path() else args.results / "history.png"
        print(history.plot(args.results / "history.jsonl", png))
        return
    t0 = time.monotonic()

    def say(msg: str) -> None:
        if not args.json:
            print(f"[{time.monotonic() - t0:5.1f} s] {msg}", file=sys.stderr, flush=True)

    try:
        res = run(args.quick, say)
    except MissingToolError as exc:  # the broker itself: nothing can be measured
        print(f"cityflux bench: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    args.results.mkdir(parents=True, exist_ok=True)
    name = "quick" if args.quick else "latest"
    # the history first: its commit is the checkout's, before this run rewrites the tracked
    # results/quick.* or latest.* (else every entry would read as a dirty tree, "<commit>+")
    history.append(args.results / "history.jsonl", res, REPO)
    (args.results / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    text = render(res)
    (args.results / f"{name}.txt").write_text(text + "\n")
    print(json.dumps(res) if args.json else text)


if __name__ == "__main__":
    main()
