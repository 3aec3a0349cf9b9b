"""What per-frame fault isolation costs (issue 12), end to end on the same broker and database
in one run: cityflux draining the single-reading workload (QoS 1)

- clean;
- with 1 % poison frames spread evenly through the stream — refused at the edge (an 80-byte
  device id, a ':' in the device level, a 70 KiB payload, an unknown format)
  or rejected by the decoder (NaN, 1e400, invalid UTF-8): each must end as one dead letter;
- with 1 % frames that make the decoder raise for its whole batch (a decoder bug, injected):
  the pipeline takes the batch apart in memory until each such frame is alone.

``python -m bench.isolation [--quick] [--json]``; each figure is a median of runs, and the
poisoned runs are reported as a ratio to the clean one measured beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from core.frames import Decoded, FrameBatch
from decoders.base import TableSpec
from decoders.registry import DecoderRegistry, load_registry
from decoders.value import DECODER as VALUE
from ingest.settings import load_settings
from ingest.topics import uplink
from storage.migrate import TimescaleMode, migrate

from .common import BenchBroker, bench_database, create_session, drain_preloaded, preload
from .workloads import PREFIX, single_reading

TOPIC = f"{PREFIX}/up/+/+/+/#"
BOOM = b"BOOM"
RESULTS = Path(__file__).parent / "results"


def edge_and_decoder_poison() -> list[tuple[str, bytes]]:
    """Poison frames of the kinds devices really send, each ending as one dead letter."""
    return [
        (uplink("env", "d" * 80, "value", PREFIX, "/temperature"), b"21.5"),
        (uplink("env", "esp:bad", "value", PREFIX, "/temperature"), b"21.5"),  # ':' in an id
        (uplink("env", "esp-big", "value", PREFIX, "/temperature"), b"1" * 70_000),
        (uplink("env", "esp-fmt", "no-such-format", PREFIX), b"21.5"),
        (uplink("env", "esp-nan", "value", PREFIX, "/temperature"), b"NaN"),
        (uplink("env", "esp-inf", "value", PREFIX, "/temperature"), b"1e400"),
        (uplink("env", "esp-utf", "value", PREFIX, "/temperature"), b"\xff\xfe21"),
    ]


def raising_poison() -> list[tuple[str, bytes]]:
    """Frames that make the injected decoder raise for their whole batch."""
    return [(uplink("env", "esp-boom", "value", PREFIX, "/temperature"), BOOM)]


Messages = list[tuple[str, bytes]]


def spread(clean: Messages, poison: Messages, every: int) -> Messages:
    """``clean`` with every ``every``-th message replaced by a poison frame (in turn)."""
    out = list(clean)
    for j, i in enumerate(range(every // 2, len(out), every)):
        out[i] = poison[j % len(poison)]
    return out


@dataclass
class RaisingValueDecoder:
    """The ``value`` decoder, raising for any batch that holds a ``BOOM`` frame."""

    name: str = "value"
    content_formats: tuple[int, ...] = ()
    tables: tuple[TableSpec, ...] = VALUE.tables

    def decode_batch(self, batch: FrameBatch) -> Decoded:
        """Raise for a batch with a BOOM frame, else decode as ``value``."""
        if BOOM in batch.payloads:
            raise RuntimeError("injected decoder fault")
        return VALUE.decode_batch(batch)


def _decoders(raising: bool) -> DecoderRegistry:
    if not raising:
        return load_registry()
    return DecoderRegistry(
        [RaisingValueDecoder(), *(d for d in load_registry() if d.name != "value")]
    )


async def _drain(port: int, url: str, cid: str, n: int, raising: bool) -> float:
    settings = load_settings(
        None,
        mqtt={"host": "127.0.0.1", "port": port, "client_id": cid, "topics": [TOPIC]},
        database={"url": url, "timescaledb": "off"},
        http={"port": 0},
        log_level="ERROR",
    )
    elapsed, *_ = await drain_preloaded(settings, n, decoders=_decoders(raising))
    return elapsed


def drain(port: int, url: str, msgs: Messages, tag: str, raising: bool) -> dict[str, Any]:
    """One run: messages/s, and the run's accounting counted in the database."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE env_readings, dead_letters")
    cid = f"iso-{tag}-{time.time_ns()}"
    create_session(port, cid, TOPIC, 1)
    preload(port, msgs)
    elapsed = asyncio.run(_drain(port, url, cid, len(msgs), raising))
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT (SELECT count(*) FROM env_readings), "
                            "(SELECT count(*) FROM dead_letters)").fetchone()  # fmt: skip
    assert rows is not None
    stored, dead = int(rows[0]), int(rows[1])
    return {
        "rate": len(msgs) / elapsed,
        "sent": len(msgs),
        "stored_rows": stored,
        "dead_letters": dead,
        "lost": len(msgs) - stored - dead,
    }


def run(quick: bool) -> dict[str, Any]:
    """Clean, edge/decoder poison and raising-decoder poison, medians of alternating runs."""
    n, runs = (30_000, 3) if quick else (150_000, 5)
    clean = single_reading(n)
    cases = {
        "clean": (clean, False),
        "poison_1pct": (spread(clean, edge_and_decoder_poison(), 100), False),
        "raising_1pct": (spread(clean, raising_poison(), 100), True),
    }
    out: dict[str, Any] = {"frames": n, "runs": runs}
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        url, drop = bench_database(tmp)
        broker = BenchBroker(tmp / "broker")
        try:
            migrate(url, load_registry().tables(), TimescaleMode.OFF)
            for r in range(runs):  # alternate, so drift hits every case alike
                for name, (msgs, raising) in cases.items():
                    samples[name].append(drain(broker.port, url, msgs, f"{name}{r}", raising))
        finally:
            broker.stop()
            drop()
    for name, got in samples.items():
        rates = [g["rate"] for g in got]
        out[name] = {"msgs_per_s": statistics.median(rates), "runs": rates, "accounting": got}
    clean_rate = out["clean"]["msgs_per_s"]
    for name in ("poison_1pct", "raising_1pct"):
        out[name]["ratio_to_clean"] = out[name]["msgs_per_s"] / clean_rate
    return out


def main() -> None:
    """Command line: print the figures, keep them in bench/results/isolation.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    got = run(args.quick)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "isolation.json").write_text(json.dumps(got, indent=2) + "\n")
    if args.json:
        json.dump(got, sys.stdout, indent=2)
        return
    for name in ("clean", "poison_1pct", "raising_1pct"):
        fig = got[name]
        ratio = f" = {fig['ratio_to_clean']:.2f} x clean" if "ratio_to_clean" in fig else ""
        lost = sum(a["lost"] for a in fig["accounting"])
        print(f"{name:14s} {fig['msgs_per_s']:>10,.0f} msg/s{ratio}  lost {lost}")


if __name__ == "__main__":
    main()
