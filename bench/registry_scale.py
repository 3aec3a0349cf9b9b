"""The registry at city scale: a 10M-device import against raw COPY, the in-memory index
(build time, memory, lookups), and pipeline throughput with the registry loaded vs empty.

``python -m bench.registry_scale [--devices N] [--runs N] [--json]``; results go to
``bench/results/registry.json``. Each run uses fresh databases on the same server; the
baselines run in the same run: raw ``COPY`` of the same file into a bare table, and the
same MQTT end-to-end workload against an empty registry.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import psycopg

from decoders.registry import load_registry
from device_registry.importer import import_devices
from device_registry.profiles import DeviceProfile, store
from storage.migrate import TimescaleMode, migrate

from . import mqtt_rates, workloads
from .common import BenchBroker

RESULTS = Path(__file__).parent / "results"
BASE_IMEI = 861_000_000_000_000
PROFILES = [
    DeviceProfile(name="nbiot-env", kind="env", decoder="nbiot-env", report_interval_s=600),
    DeviceProfile(name="ev", kind="ev", decoder="gbt32960", report_interval_s=30),
    DeviceProfile(name="air-station", kind="air", decoder="hj212", report_interval_s=60),
]


def write_devices(path: Path, n: int) -> None:
    """A registry file: 80 % NB-IoT IMEIs (the ids the MQTT workload uses come first),
    10 % EV VINs, 10 % HJ 212 station MNs, with districts and coordinates."""
    rng = np.random.default_rng(42)
    lat = np.round(22.4 + rng.random(n) * 0.4, 6)
    lon = np.round(113.8 + rng.random(n) * 0.6, 6)
    districts = ["Futian", "Luohu", "Nanshan", "Baoan", "Longgang", "Yantian"]
    with path.open("w") as out:
        out.write("external_id,profile,district,lat,lon\n")
        for lo in range(0, n, 100_000):
            lines = []
            for i in range(lo, min(n, lo + 100_000)):
                kind = i % 10 if i >= 10_000 else 0  # the MQTT workload's 1,000 are IMEIs
                if kind == 8:
                    ext, prof = f"LSVAU2180N{i:07d}", "ev"
                elif kind == 9:
                    ext, prof = f"44030000{i:016d}", "air-station"
                else:
                    ext, prof = str(BASE_IMEI + i), "nbiot-env"
                lines.append(f"{ext},{prof},{districts[i % 6]},{lat[i]},{lon[i]}\n")
            out.write("".join(lines))


@contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    """A new database on the bench server, dropped afterwards."""
    name = f"cityflux_reg_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rpartition("/")[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def raw_copy_rate(url: str, path: Path, n: int) -> float:
    """Devices/s of ``COPY … FROM STDIN (FORMAT csv)`` of the file into a bare table."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bare_devices (external_id text, profile text, district text, "
            "lat float8, lon float8)"
        )
        start = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("COPY bare_devices FROM STDIN (FORMAT csv, HEADER)") as copy,
            path.open("rb") as fh,
        ):
            while block := fh.read(1 << 20):
                copy.write(block)
        return n / (time.perf_counter() - start)


def import_rate(url: str, path: Path) -> tuple[float, int]:
    """Devices/s of ``cityflux devices import`` into an empty registry, and the count."""
    migrate(url, load_registry().tables(), TimescaleMode.OFF)
    with psycopg.connect(url, autocommit=True) as conn:
        store(conn, PROFILES)
        start = time.perf_counter()
        result = import_devices(conn, path)
        elapsed = time.perf_counter() - start
    assert not result.errors, result.errors[:3]
    return result.inserted / elapsed, result.inserted


def index_figures(url: str) -> dict[str, float]:
    """Index build time, resident memory and lookup rate, measured in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.registry_index", url],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def e2e(port: int, url: str, msgs: list[tuple[str, bytes]]) -> float:
    """Pipeline messages/s (QoS 1, MQTT to commit) against this database's registry."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE env_readings")
    run = mqtt_rates.e2e_rate(port, url, msgs, 1, "reg")
    assert run.frames_stored == len(msgs), f"stored {run.frames_stored} of {len(msgs)}"
    return run.rate


def run(devices: int, runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Every figure, ``runs`` times; medians and the per-run values."""
    admin = os.environ.get("CITYFLUX_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    per_run: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        per_run.setdefault(key, []).append(value)
        log(f"  {key}: {value:,.2f}")

    msgs = workloads.multi_reading(50_000, devices=1000, base_imei=BASE_IMEI)
    with tempfile.TemporaryDirectory(prefix="cityflux-reg-") as tmp_s:
        tmp = Path(tmp_s)
        path = tmp / "devices.csv"
        start = time.perf_counter()
        write_devices(path, devices)
        log(
            f"wrote {devices:,} devices ({path.stat().st_size / 1e6:,.0f} MB) "
            f"in {time.perf_counter() - start:.1f} s"
        )
        broker = BenchBroker(tmp / "broker")
        try:
            for r in range(runs):
                log(f"run {r + 1}/{runs}")
                with fresh_database(admin) as bare_url:
                    note("raw_copy_devices_per_s", raw_copy_rate(bare_url, path, devices))
                with fresh_database(admin) as url:
                    rate, inserted = import_rate(url, path)
                    assert inserted == devices
                    note("import_devices_per_s", rate)
                    # steady state for what follows: without this, autovacuum's first pass
                    # over the 10M new rows runs during the measurements
                    start = time.perf_counter()
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute("VACUUM (ANALYZE) devices")
                    note("vacuum_after_import_s", time.perf_counter() - start)
                    for key, value in index_figures(url).items():
                        note(key, value)
                    note("e2e_msgs_per_s_loaded", e2e(broker.port, url, msgs))
                with fresh_database(admin) as empty_url:
                    migrate(empty_url, load_registry().tables(), TimescaleMode.OFF)
                    note("e2e_msgs_per_s_empty", e2e(broker.port, empty_url, msgs))
        finally:
            broker.stop()
    med = {k: median(v) for k, v in per_run.items()}
    return {
        "machine": f"{platform.node()} {os.cpu_count()} cores CPython {platform.python_version()}",
        "devices": devices,
        "runs": runs,
        "started": time.strftime("%FT%TZ"),
        **med,
        "import_vs_raw_copy": med["import_devices_per_s"] / med["raw_copy_devices_per_s"],
        "e2e_loaded_vs_empty": med["e2e_msgs_per_s_loaded"] / med["e2e_msgs_per_s_empty"],
        "per_run": per_run,
    }


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    res = run(args.devices, args.runs, lambda s: print(s, file=sys.stderr, flush=True))
    RESULTS.mkdir(exist_ok=True)
    name = "registry.json" if args.devices >= 10_000_000 else "registry-small.json"
    (RESULTS / name).write_text(json.dumps(res, indent=2) + "\n")
    if args.json:
        print(json.dumps(res))
    else:
        d = res
        print(f"registry of {d['devices']:,} devices, medians of {d['runs']} runs")
        print(f"  raw COPY of the file:    {d['raw_copy_devices_per_s']:>12,.0f} devices/s")
        print(
            f"  cityflux devices import: {d['import_devices_per_s']:>12,.0f} devices/s "
            f"({d['import_vs_raw_copy']:.2f} × raw COPY; target ≥ 0.5)"
        )
        print(f"  index build from the DB: {d['index_build_s']:>12.1f} s (target ≤ 60)")
        print(f"  resident memory after:   {d['rss_mb']:>12,.0f} MB (target ≤ 1,536)")
        print(f"  batch lookups:           {d['lookups_per_s']:>12,.0f} ids/s (target ≥ 1,000,000)")
        print(
            f"  pipeline, 10M loaded:    {d['e2e_msgs_per_s_loaded']:>12,.0f} msg/s "
            f"vs empty {d['e2e_msgs_per_s_empty']:,.0f} "
            f"({d['e2e_loaded_vs_empty']:.2f}; target ≥ 0.9)"
        )


if __name__ == "__main__":
    main()
