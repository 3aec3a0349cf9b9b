"""The bench's arithmetic, without a broker or a database: every rate is of what was stored
(or answered with success), and the history names the commit measured, not a tree the bench
itself made dirty."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench import coap_rates, mqtt_rates, scaleout, workloads
from simulators.coap_client import CoapReport


def test_a_drain_that_stored_less_reports_less(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 frames sent, 900 stored (8 readings each) over 2 s: 450 frames/s, not 500."""
    got = mqtt_rates.E2E(
        rate=500.0, frames_stored=900, rows_in_db=7200, acknowledged=1000, elapsed_s=2.0
    )
    monkeypatch.setattr(mqtt_rates, "e2e_rate", lambda *a: got)
    msgs = [("t", b"x")] * 1000
    d = bench_main._drain(0, "", msgs, 1, 8, "t")
    assert d["msgs_per_s"] == 450.0
    assert d["readings_per_s"] == 3600.0
    assert (d["lost_readings"], d["lost_frames"]) == (800, 100)


def test_coap_rate_counts_successes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server answering 4.xx is not a fast server: 60 of 100 answers were 2.04."""
    rep = CoapReport(sent=100, answers=Counter({"2.04": 60, "4.00": 40}), elapsed_s=2.0)
    monkeypatch.setattr(coap_rates, "send_uplinks", lambda *a, **k: rep)
    out = coap_rates._drive(0, [], 10)
    assert out["per_s"] == 30.0
    rep.answers = Counter({"2.01": 50, "2.04": 50})  # libcoap: created, then changed
    assert coap_rates._drive(0, [], 10)["per_s"] == 50.0


def test_scaleout_rate_is_of_stored_frames() -> None:
    k = workloads.MULTI_READINGS
    assert scaleout.stored_rate(400 * k, 2.0) == 200.0


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_history_names_the_clean_commit_though_the_run_rewrites_tracked_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/results/quick.json is tracked: the run rewrites it, and the history entry must
    still carry the commit measured (without "+")."""
    repo, results = tmp_path / "repo", tmp_path / "repo" / "results"
    results.mkdir(parents=True)
    (results / "quick.json").write_text("{}\n")
    (results / "quick.txt").write_text("old\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    res: dict[str, Any] = {"lost": 0, "started": "2026-12-02T00:00:00Z", "machine": "m"}
    monkeypatch.setattr(bench_main, "REPO", repo)
    monkeypatch.setattr(bench_main, "run", lambda quick, log: res)
    monkeypatch.setattr(bench_main, "render", lambda r: "new")
    bench_main.main(["--quick", "--results", str(results)])
    (entry,) = [json.loads(line) for line in (results / "history.jsonl").read_text().splitlines()]
    assert not entry["commit"].endswith("+")
    assert (results / "quick.txt").read_text() == "new\n"


def test_raw_copy_runs_on_as_many_connections_as_the_service_will_have(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drains load their settings from the environment too: the limit follows them."""
    monkeypatch.setenv("CITYFLUX_DATABASE__WRITERS", "3")
    assert bench_main.pipeline_writers() == 3
    monkeypatch.delenv("CITYFLUX_DATABASE__WRITERS")
    assert bench_main.pipeline_writers() == 2


def _fabricated_run(c_client: float | None) -> dict[str, Any]:
    drain = {"msgs_per_s": 900.0, "readings_per_s": 900.0, "lost_frames": 0}
    return {
        "c_client_qos1": c_client,
        "c_client_qos0": c_client,
        "single_qos1": drain | {"acknowledged": 10, "sent": 10},
        "single_qos0": drain,
        "multi_qos1": drain | {"readings_per_s": 7200.0, "acknowledged": 5, "sent": 5},
        "multi_qos0": drain | {"readings_per_s": 7200.0},
        "raw_copy": 8000.0,
    }


def test_a_limit_not_installed_is_na_with_the_package_never_a_traceback() -> None:
    """No mosquitto-clients: no C client to drain against and no fleet for the live mode;
    the report says n/a and which package, and the figures that ran are still there."""
    from bench import live

    d: dict[str, Any] = {
        "runs": [_fabricated_run(None)],
        "missing": {
            "C client": "mosquitto_sub not found (Debian package mosquitto-clients)",
            "live fleet": "mosquitto_pub not found (Debian package mosquitto-clients)",
        },
        "live": live.not_run(4, 100),
        "coap": {"cityflux_req_per_s": 50.0, "libcoap_req_per_s": None, "ratio": None, "lost": 0},
        "listener_qos1": (1000.0, [1000.0]),
        "naive": (10.0, [10.0]),
        "esphome": {"msgs_per_s": None},
    }
    res = bench_main._summary(d, True, 1, 2, "2026-12-02T20:00:00Z")
    assert res["drain_vs_c_client"] is None
    assert res["live_vs_mq_bridge"] is None
    assert res["multi_vs_raw_copy"] == 0.9
    assert res["started"] == "2026-12-02T20:00:00Z"
    text = bench_main.render(res)
    assert "msg/s  C client n/a   n/a" in text
    assert "n/a: C client: mosquitto_sub not found (Debian package mosquitto-clients)" in text
    assert "cityflux n/a events/s   mq-bridge n/a   ratio n/a" in text
    d["runs"] = [_fabricated_run(1000.0)]
    assert bench_main._summary(d, True, 1, 2, "")["drain_vs_c_client"] == 0.9


def test_plot_without_a_path_writes_beside_the_history_it_draws(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--results DIR --plot``: the PNG goes to DIR/history.png, never into the checkout;
    a quick run is drawn apart from the full ones."""
    lines = [
        {"command": "cityflux bench", "commit": "aaa", "time": "2026-12-01T00:00:00Z"},
        {"command": "cityflux bench --quick", "commit": "bbb", "time": "2026-12-02T00:00:00Z"},
    ]
    history = tmp_path / "history.jsonl"
    history.write_text(
        "".join(json.dumps(e | {"figures": {"drain_vs_c_client": 0.9}}) + "\n" for e in lines)
    )
    bench_main.main(["--results", str(tmp_path), "--plot"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "history.png")
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_mosquitto_says_which_package_and_drops_the_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import common

    dropped: list[bool] = []
    monkeypatch.setattr(
        bench_main, "bench_database", lambda _tmp: ("", lambda: dropped.append(True))
    )
    monkeypatch.setattr(common.shutil, "which", lambda _name: None)
    with pytest.raises(SystemExit) as stop:
        bench_main.main(["--quick", "--results", str(tmp_path)])
    assert stop.value.code == 2
    assert dropped == [True]
    assert "mosquitto not found (Debian package mosquitto)" in capsys.readouterr().err


def test_live_and_coap_ratios_are_medians_of_run_by_run_ratios() -> None:
    """As the drains: each run against the one beside it, then the median (1.0 here); the
    ratio of the two medians (2 / 3) would pair runs that never ran together."""
    from bench.common import paired_ratio

    ours = [{"r": 1.0}, {"r": 2.0}, {"r": 9.0}]
    theirs = [{"r": 1.0}, {"r": 8.0}, {"r": 3.0}]
    assert paired_ratio(ours, theirs, "r") == 1.0
    assert paired_ratio(ours, [{"r": None}, {"r": 8.0}, {"r": 3.0}], "r") == 1.625
    assert paired_ratio(ours, [{"error": "x"}] * 3, "r") is None
