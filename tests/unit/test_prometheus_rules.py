"""The operators' Prometheus rules (deploy/prometheus/rules/cityflux.yml): every alert is
documented, reads only metrics we export, and fires as its promtool unit test says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.metrics import Metrics

ROOT = Path(__file__).parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules" / "cityflux.yml"
RULE_TESTS = PROM / "rules" / "cityflux.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="needs Debian's prometheus (apt-get install prometheus); .ci/run installs it",
)
LABEL_TEMPLATE = re.compile(r"\{\{ \$labels\.(\w+) \}\}")


def _alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def _recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def _exported() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names |= {family.name, family.name + "_total", family.name + "_bucket"}
    return names


def _render(template: str, labels: dict[str, str]) -> str:
    """A description or runbook as Prometheus renders it (they only name labels)."""
    return LABEL_TEMPLATE.sub(lambda m: labels[m.group(1)], template)


def completed_tests() -> dict[str, Any]:
    """The promtool test file with each expected alert's description and runbook filled in
    from the rules (promtool compares annotations whole; the file states the summaries)."""
    alerts = _alerts()
    tests = yaml.safe_load(RULE_TESTS.read_text())
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            annotations = alerts[check["alertname"]]["annotations"]
            for exp in check["exp_alerts"]:
                labels = {k: str(v) for k, v in exp["exp_labels"].items()}
                for key in ("description", "runbook"):
                    exp["exp_annotations"][key] = _render(annotations[key], labels)
    return tests


def test_every_alert_has_a_severity_summary_description_and_runbook() -> None:
    alerts = _alerts()
    assert len(alerts) >= 12
    for name, rule in alerts.items():
        assert name.startswith("Cityflux"), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, name
        assert len(annotations["runbook"]) >= 200, f"{name}: a runbook says what to do"
        for key in ("description", "runbook"):
            rest = LABEL_TEMPLATE.sub("", annotations[key])
            assert "{{" not in rest, f"{name}.{key}: only {{{{ $labels.x }}}} templates"


def test_rules_read_only_metrics_we_export_or_record() -> None:
    exported, recorded = _exported(), _recorded()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        for name in re.findall(r"\bcityflux_[a-z0-9_]+", rule["expr"]):
            assert name in exported, f"{rule.get('alert') or rule['record']} reads {name}"
        for name in re.findall(r"\bcityflux:[a-z0-9_:]+", rule["expr"]):
            assert name in recorded, f"{rule.get('alert') or rule['record']} reads {name}"


def test_every_alert_has_a_promtool_case_that_fires_it() -> None:
    fired = {
        check["alertname"]
        for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for check in case.get("alert_rule_test", [])
        if check["exp_alerts"]
    }
    assert fired == set(_alerts())


def test_prometheus_config_loads_the_rules_and_compose_mounts_them() -> None:
    conf = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert conf["rule_files"] == ["rules/cityflux.yml"]
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    assert (
        "./prometheus/rules:/etc/prometheus/rules:ro"
        in compose["services"]["prometheus"]["volumes"]
    )


@needs_promtool
def test_promtool_accepts_the_rules_and_the_config() -> None:
    assert PROMTOOL is not None, "promtool is required in CI"
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(
        [PROMTOOL, "check", "config", str(PROM / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _promtool_test(folder: Path, rules: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is required in CI"
    (folder / RULES.name).write_text(rules)
    (folder / "cityflux.test.yml").write_text(yaml.safe_dump(completed_tests()))
    return subprocess.run(
        [PROMTOOL, "test", "rules", "cityflux.test.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass(tmp_path: Path) -> None:
    out = _promtool_test(tmp_path, RULES.read_text())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


@needs_promtool
def test_promtool_unit_tests_fail_when_a_threshold_changes(tmp_path: Path) -> None:
    rules = RULES.read_text()
    assert rules.count("cityflux:dead_letter_ratio_by_reason:rate5m > 0.05") == 1
    out = _promtool_test(
        tmp_path,
        rules.replace(
            "cityflux:dead_letter_ratio_by_reason:rate5m > 0.05",
            "cityflux:dead_letter_ratio_by_reason:rate5m > 0.5",
        ),
    )
    assert out.returncode == 1
    assert "alertname: CityfluxDeadLetterRatioHigh" in out.stdout + out.stderr
