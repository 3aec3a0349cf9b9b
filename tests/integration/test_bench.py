"""``cityflux bench --quick --json``: runs against a private mosquitto and the database server,
prints the figures the issue names, and loses nothing. (No timing is asserted here.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("mosquitto") is None, reason="the bench runs its own mosquitto"
    ),
]

KEYS = (
    "e2e_msgs_per_s",
    "bare_subscriber_msgs_per_s",
    "e2e_readings_per_s",
    "raw_copy_rows_per_s",
    "peer_msgs_per_s",
    "naive_msgs_per_s",
    "lost",
)


def test_quick_bench_prints_every_figure_and_loses_nothing(pg_server: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CITYFLUX_BENCH_PG_URL": pg_server},
        check=True,
    )
    res = json.loads(out.stdout)
    assert set(KEYS) <= set(res)
    assert res["lost"] == 0
    d = res["detail"]
    # every e2e run stored exactly what it was sent: 30,000 one-reading and 15,000 × 8 readings
    for q in (0, 1):
        assert [a["stored_readings"] for a in d[f"single_qos{q}"]["accounting"]] == [30_000]
        assert [a["stored_readings"] for a in d[f"multi_qos{q}"]["accounting"]] == [120_000]
    assert d["naive_stored_per_run"] == [3_000]
    for key in (*KEYS[:4], "naive_msgs_per_s"):
        assert res[key] > 0, key
    if res["peer_msgs_per_s"] is None:  # the peer comes from PyPI: say why it is missing
        pytest.fail(f"peer not measured: {d['peer']['error']}")
    assert d["peer"]["backlog_left"] > 0, "the peer ran out of work: its rate is understated"
    assert json.loads((tmp_path / "quick.json").read_text())["lost"] == 0
