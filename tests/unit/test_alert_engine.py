"""The threshold engine: duration, hysteresis, many devices at once, state across batches,
frame time; and the shipped example rule files against frames that must and must not fire."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alerts.engine import Engine
from alerts.rules import load_rules
from cityflux.cli import app
from core.frames import TableRows
from core.yamlfile import DocumentError
from decoders.gbt32960 import frame as gbt_frame
from decoders.gbt32960 import realtime_data
from decoders.hj212 import frame as hj212_frame
from decoders.registry import load_registry

TABLES = {t.name: t for t in load_registry().tables()}
EXAMPLES = Path(__file__).parents[2] / "alerts" / "examples"
T0 = 1_767_225_600_000_000
MIN = 60_000_000

RULE = """\
rules:
  - name: no2-high
    table: env_readings
    where: metric == "no2"
    when: value > 75
    for: 10m
    clear: value < 60
    clear_for: 10m
    severity: critical
"""


def _rows(samples: list[tuple[str, int, float]], metric: str = "no2") -> TableRows:
    return TableRows(
        "env_readings",
        {
            "time": np.array([T0 + m * MIN for _, m, _ in samples], dtype=np.int64),
            "metric": np.array([metric.encode()] * len(samples)),
            "value": np.array([v for _, _, v in samples]),
        },
        np.array([d.encode() for d, _, _ in samples]),
        np.arange(len(samples), dtype=np.int32),
    )


def _engine(tmp_path: Path, text: str = RULE) -> Engine:
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    return Engine(load_rules(f, TABLES))


def _events(engine: Engine, rows: TableRows) -> list[tuple[str, str, int, float | None]]:
    rows.columns["device_id"] = np.array([int(d[1:]) for d in rows.devices.tolist()], np.int32)
    return [
        (e.subject or "", e.state, (e.at_us - T0) // MIN, e.value)
        for e in engine.evaluate({rows.table: rows})
    ]


# device A: above 75 from minute 0, raised at 10; 70 is inside the hysteresis band; below
# 60 from minute 20, cleared at 30. Device B: a 5-minute spike never raises.
SERIES = [
    ("A0", 0, 80.0), ("A0", 5, 90.0), ("A0", 10, 81.0), ("A0", 15, 70.0), ("A0", 20, 50.0),
    ("A0", 25, 55.0), ("A0", 30, 40.0), ("B1", 0, 100.0), ("B1", 5, 100.0), ("B1", 6, 10.0),
    ("B1", 20, 10.0),
]  # fmt: skip


def test_duration_and_hysteresis(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    mixed = SERIES[::-1]  # rows arrive in any order; frame time decides
    assert _events(engine, _rows(mixed)) == [
        ("A0", "raised", 10, 81.0),
        ("A0", "cleared", 30, 40.0),
    ]


def test_state_carries_across_batches_and_other_metrics_are_ignored(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    got = []
    for part in (SERIES[:2], SERIES[2:5], SERIES[5:]):
        got += _events(engine, _rows(part))
        assert _events(engine, _rows(part, metric="pm2_5")) == []
    assert got == [("A0", "raised", 10, 81.0), ("A0", "cleared", 30, 40.0)]


def test_a_raised_alert_is_not_raised_again(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    rows = [("A0", m, 90.0) for m in range(0, 60, 5)]
    assert _events(engine, _rows(rows)) == [("A0", "raised", 10, 90.0)]
    assert engine.active("no2-high").tolist() == [0]


def test_rule_file_errors_name_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(RULE.replace("value > 75", "valu > 75"))
    with pytest.raises(DocumentError) as err:
        load_rules(f, TABLES)
    assert f"{f}:5: rules[0].when: unknown column 'valu'" in str(err.value)
    f.write_text(RULE.replace("for: 10m", "for: soon"))
    with pytest.raises(DocumentError) as err:
        load_rules(f, TABLES)
    assert f"{f}:6: rules[0].for" in str(err.value)


def test_a_rule_name_yaml_reads_as_a_boolean_is_an_error_saying_to_quote_it(
    tmp_path: Path,
) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(RULE.replace("name: no2-high", "name: off"))
    with pytest.raises(DocumentError) as err:
        load_rules(f, TABLES)
    assert str(err.value) == (
        f"{f}:2: rules[0].name: Input should be a valid string: YAML reads off as false; "
        'quote it: "off"'
    )
    f.write_text(RULE.replace("name: no2-high", 'name: "off"'))
    assert [r.name for r in load_rules(f, TABLES).rules] == ["off"]
    f.write_text(RULE.replace("name: no2-high", "name: 2026-12-02"))  # a date: no JSON form
    with pytest.raises(DocumentError) as err:
        load_rules(f, TABLES)
    assert 'YAML reads 2026-12-02 as "2026-12-02"; quote it: "2026-12-02"' in str(err.value)


def _hj212(mn: str, minute: int, pm25: float) -> str:
    cp = f"DataTime=20260101{minute // 60:02d}{minute % 60:02d}00;a34004-Rtd={pm25},a34004-Flag=N"
    return hj212_frame(f"QN=1;ST=22;CN=2011;PW=1;MN={mn};Flag=4;CP=&&{cp}&&").decode().strip()


def test_every_example_file_is_valid() -> None:
    for f in sorted(EXAMPLES.glob("*.yaml")):
        assert load_rules(f, TABLES), f


def test_air_quality_example_fires_on_a_pollution_episode_only(tmp_path: Path) -> None:
    frames = [_hj212("ST-POLLUTED", m, 80.0 + m) for m in range(0, 16)]
    frames += [_hj212("ST-CLEAN", m, 20.0 + (m % 3) * 40) for m in range(0, 16)]  # spikes of 1 min
    src = tmp_path / "frames.txt"
    src.write_text("\n".join(frames) + "\n")
    result = CliRunner().invoke(
        app,
        ["rules", "test", "--rules", str(EXAMPLES / "air-quality.yaml"), "-f", "hj212", str(src)],
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events == [
        {
            "rule": "pm25-high",
            "device": "ST-POLLUTED",
            "state": "raised",
            "at": "2025-12-31T16:10:00Z",  # DataTime is UTC+8
            "value": 90.0,
            "severity": "warning",
        }
    ]


def test_ev_example_fires_on_alarm_level_and_cell_spread() -> None:
    engine = Engine(load_rules(EXAMPLES / "ev.yaml", TABLES))
    from core.frames import FrameBatch
    from decoders.gbt32960 import DECODER

    b = FrameBatch("gbt32960", "t")
    b.append(gbt_frame(0x02, "LSVAU2180N0000001", realtime_data()), "t", "", "", 0)
    rows = DECODER.decode_batch(b).rows["ev_status"]
    rows.columns["device_id"] = np.zeros(len(rows), dtype=np.int32)
    events = engine.evaluate({"ev_status": rows})
    # realtime_data(): alarm level 2; cells 4.125 / 3.980 V (spread 0.145: no alert)
    assert [(e.rule, e.state, e.value) for e in events] == [("ev-alarm-level", "raised", 2.0)]


def test_rules_check_cli(tmp_path: Path) -> None:
    ok = CliRunner().invoke(app, ["rules", "check", str(EXAMPLES / "air-quality.yaml")])
    assert (ok.exit_code, "3 rules OK (hj212_readings)" in ok.output) == (0, True)
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULE.replace("severity: critical", "severity: loud"))
    result = CliRunner().invoke(app, ["rules", "check", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:9: rules[0].severity: Input should be 'info', 'warning' or 'critical'" in (
        result.output
    )
