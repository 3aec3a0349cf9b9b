"""Index figures in a process of their own: ``python -m bench.registry_index URL``.

Prints one JSON object: build time from the database, resident memory after (and peak), and
batch lookup rate (batches of 10,000 random registered ids, median of 5).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from statistics import median

import numpy as np
import psycopg

from device_registry.resolver import DeviceResolver, UnknownDevicePolicy


def _status_mb(field: str) -> float:
    for line in open("/proc/self/status").read().splitlines():  # noqa: SIM115
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _build(url: str) -> tuple[DeviceResolver, float]:
    resolver = DeviceResolver(UnknownDevicePolicy.REJECT)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        await resolver.load(conn)
        return resolver, time.perf_counter() - start


def main() -> None:
    """Measure and print."""
    url = sys.argv[1]
    before = _status_mb("VmRSS")
    resolver, build_s = asyncio.run(_build(url))
    rss = _status_mb("VmRSS")
    keys = resolver.index._main.keys
    rng = np.random.default_rng(7)
    batches = [keys[rng.integers(0, keys.shape[0], 10_000)] for _ in range(50)]
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for b in batches:
            ids = resolver.index.resolve(b)
        rates.append(50 * 10_000 / (time.perf_counter() - start))
        assert (ids >= 0).all()
    print(
        json.dumps(
            {
                "index_build_s": build_s,
                "rss_mb": rss,
                "rss_peak_mb": _status_mb("VmHWM"),
                "rss_before_mb": before,
                "index_mb": resolver.index.nbytes / 1e6,
                "lookups_per_s": median(rates),
            }
        )
    )


if __name__ == "__main__":
    main()
