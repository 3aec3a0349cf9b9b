"""Deployment files, checked by reading (no Docker engine here) against what they call."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from core.metrics import Metrics
from ingest.settings import load_settings

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"


def _exported_metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        for sample in family.samples:
            names.add(sample.name)
        names.add(family.name)
    return names


def test_grafana_dashboard_queries_only_metrics_we_export() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "cityflux.json").read_text())
    assert dash["uid"] == "cityflux-ingest"
    exported = (
        _exported_metric_names()
        | {n + "_bucket" for n in _exported_metric_names()}
        | {n + "_total" for n in _exported_metric_names()}
    )
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "cityflux.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            for name in re.findall(r"cityflux_[a-z0-9_]+", target["expr"]):
                assert name in exported, f"panel {panel['title']!r} queries unknown {name}"
            for name in re.findall(r"cityflux:[a-z0-9_:]+", target["expr"]):
                assert name in recorded, f"panel {panel['title']!r} queries unrecorded {name}"


def test_grafana_provisioning_points_at_the_dashboard_folder() -> None:
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/cityflux.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = prov["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in mounts
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"


def test_compose_environment_is_a_valid_cityflux_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    svc = compose["services"]["cityflux"]
    for key, value in svc["environment"].items():
        monkeypatch.setenv(key, str(value))
    s = load_settings()
    assert s.mqtt.host == "mosquitto"
    assert s.database.url.get_secret_value().startswith(
        "postgresql://postgres:cityflux@timescaledb"
    )
    assert s.http.host == "0.0.0.0"  # noqa: S104 - listens inside its container
    assert f"{s.http.port}:{s.http.port}" in svc["ports"]
    assert svc["command"] == ["serve"]
    assert set(compose["services"]) == {
        "timescaledb",
        "mosquitto",
        "cityflux",
        "prometheus",
        "grafana",
    }
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [f"cityflux:{s.http.port}"]


def test_dockerfile_runs_the_console_script_as_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["cityflux"] == "cityflux.cli:app"
    assert 'ENTRYPOINT ["cityflux"]' in text
    assert 'CMD ["serve"]' in text
    assert re.search(r"^USER cityflux$", text, re.M)
    assert "http://127.0.0.1:9108/healthz" in text
    packages = set(re.findall(r"^COPY (\w+) \1$", text, re.M))
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert packages == {p.rstrip("*") for p in shipped["packages"]["find"]["include"]}
    assert {"cityflux", "core", "ingest"} <= packages


def test_mosquitto_config_keeps_frames_for_a_stopped_consumer() -> None:
    conf = dict(
        line.split(None, 1)
        for line in (DEPLOY / "mosquitto/mosquitto.conf").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert conf["persistence"] == "true"
    assert int(conf["max_queued_messages"]) >= 100_000
    assert conf["max_inflight_messages"] == "0"
