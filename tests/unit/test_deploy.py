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


def _env_example() -> dict[str, str]:
    lines = (DEPLOY / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:?message}`` substitution, from ``env``."""
    return re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: env[m.group(1)], value)


def test_compose_environment_is_a_valid_cityflux_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    svc = compose["services"]["cityflux"]
    env = _env_example()
    for key, value in svc["environment"].items():
        monkeypatch.setenv(key, _interpolate(str(value), env))
    s = load_settings()
    assert s.mqtt.host == "mosquitto"
    assert s.database.url.get_secret_value() == (
        f"postgresql://cityflux:{env['POSTGRES_PASSWORD']}@timescaledb:5432/cityflux"
    )
    assert s.http.host == "0.0.0.0"  # noqa: S104 - listens inside its container
    assert f"127.0.0.1:{s.http.port}:{s.http.port}" in svc["ports"]
    assert svc["command"] == ["serve"]
    assert set(compose["services"]) == {
        "timescaledb",
        "broker-credentials",
        "mosquitto",
        "cityflux",
        "prometheus",
        "grafana",
    }
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [f"cityflux:{s.http.port}"]


def test_compose_publishes_no_database_port_and_operator_ports_on_loopback_only() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert "ports" not in services["timescaledb"]
    for name in ("cityflux", "prometheus", "grafana"):
        tcp = [p for p in services[name]["ports"] if not p.endswith("/udp")]
        assert tcp, name
        assert all(p.startswith("127.0.0.1:") for p in tcp), (name, tcp)
    # what devices must reach: the broker over TLS (authenticated) and CoAP (OSCORE, DTLS-PSK);
    # plain MQTT on this host only
    assert services["mosquitto"]["ports"] == ["8883:8883", "8884:8884", "127.0.0.1:1883:1883"]
    assert services["cityflux"]["environment"]["CITYFLUX_COAP__MODE"] == "oscore"
    assert services["cityflux"]["environment"]["CITYFLUX_COAP__DTLS"] == "psk"
    assert [p for p in services["cityflux"]["ports"] if p.endswith("/udp")] == [
        "5683:5683/udp",
        "5684:5684/udp",
    ]


def test_compose_takes_every_secret_from_the_env_file_and_none_is_committed() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    env = _env_example()
    used = set(re.findall(r"\$\{(\w+)", text))
    assert (
        used
        == set(env)
        == {
            "POSTGRES_PASSWORD",
            "MQTT_SERVICE_PASSWORD",
            "WEBHOOK_SECRET",
            "GRAFANA_ADMIN_PASSWORD",
        }
    )
    # each is required (compose refuses to start without it), none has a default
    assert not re.search(r"\$\{\w+(:?-)", text)
    assert len(re.findall(r"\$\{\w+:\?", text)) == len(re.findall(r"\$\{", text))
    assert set(env.values()) == {"change-me"}  # placeholders, nothing real
    services = yaml.safe_load(text)["services"]
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|__URL", key):
                assert "${" in str(value), f"{name}: {key} is not from the env file"
    assert "admin/admin" not in text
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )
    assert "/deploy/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_broker_refuses_anonymous_clients_and_reads_credentials_made_from_the_registry() -> None:
    conf = dict(
        line.split(None, 1)
        for line in (DEPLOY / "mosquitto/mosquitto.conf").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert conf["allow_anonymous"] == "false"
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    init, broker = services["broker-credentials"], services["mosquitto"]
    mounted = dict(v.rsplit(":", 2)[:2] for v in broker["volumes"] if v.count(":") == 2)
    assert mounted["mosquitto-credentials"] == "/mosquitto/credentials"
    assert conf["password_file"] == "/mosquitto/credentials/passwd"  # noqa: S105 - a path
    assert conf["acl_file"] == "/mosquitto/credentials/acl"
    # the init step writes both files into that volume from the registry, before the broker
    script = " ".join(init["command"])
    assert "cityflux devices credentials" in script
    assert "--password-file /credentials/passwd --acl-file /credentials/acl" in script
    assert "mosquitto-credentials:/credentials" in init["volumes"]
    assert broker["depends_on"]["broker-credentials"]["condition"] == (
        "service_completed_successfully"
    )
    # the service has its own broker user, which the init step puts in the password file
    env = init["environment"]
    assert env["CITYFLUX_MQTT__USERNAME"] == "cityflux"
    assert env == {k: services["cityflux"]["environment"][k] for k in env}


def test_every_api_route_of_the_deployed_service_needs_a_bearer_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ingest.http import AlertsApi, create_app

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for key, value in compose["services"]["cityflux"]["environment"].items():
        monkeypatch.setenv(key, _interpolate(str(value), _env_example()))
    s = load_settings()
    app = create_app(
        Metrics(),
        dict,
        s.database.url.get_secret_value(),
        AlertsApi(list, lambda: None),
        s.http.metrics_access,
    )
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearer"]["description"],
    }
    api = [
        (path, method, op)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if path.startswith("/api/v1/")
    ]
    assert len(api) >= 13
    for path, method, op in api:
        assert op.get("security") == [{"bearer": []}], (method, path)
    for path in ("/healthz", "/readyz", "/metrics"):  # open: probes and Prometheus
        assert "security" not in schema["paths"][path]["get"], path


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


def _listeners() -> dict[str, dict[str, str]]:
    """mosquitto.conf's options per listener (key: the port; "" for the global ones)."""
    blocks: dict[str, dict[str, str]] = {"": {}}
    current = ""
    for line in (DEPLOY / "mosquitto/mosquitto.conf").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            current = value.split()[0]
            blocks[current] = {}
            continue
        blocks[current][key] = value
    return blocks


def test_broker_serves_devices_over_tls_1_2_with_certificates_from_a_volume() -> None:
    listeners = _listeners()
    assert set(listeners) == {"", "1883", "8883", "8884"}
    assert listeners[""].get("per_listener_settings", "false") == "false"  # one auth for all
    assert listeners[""]["allow_anonymous"] == "false"
    for port in ("8883", "8884"):
        tls = listeners[port]
        assert tls["tls_version"] == "tlsv1.2", port  # the oldest accepted (Mosquitto 2)
        assert (tls["cafile"], tls["certfile"], tls["keyfile"]) == (
            "/mosquitto/tls/ca.crt",
            "/mosquitto/tls/server.crt",
            "/mosquitto/tls/server.key",
        ), port
    assert "require_certificate" not in listeners["8883"]  # passwords over TLS
    assert listeners["8884"]["require_certificate"] == "true"  # certificate devices
    assert listeners["8884"]["use_identity_as_username"] == "true"
    assert not {"certfile", "keyfile", "cafile"} & set(listeners["1883"])
    broker = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["mosquitto"]
    assert "./tls:/mosquitto/tls:ro" in broker["volumes"]  # mounted read-only, never built in
    assert "/deploy/tls/" in (ROOT / ".gitignore").read_text().splitlines()  # keys stay out
    assert "8883:8883" in broker["ports"]
    assert "8884:8884" in broker["ports"]
    assert "127.0.0.1:1883:1883" in broker["ports"]


def test_the_service_image_carries_the_dtls_extra_its_compose_config_needs() -> None:
    text = (ROOT / "Dockerfile").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(d.startswith("python-mbedtls") for d in extras["dtls"])
    assert re.search(r'^RUN pip wheel .*"\.\[dtls\]"', text, re.M)
    assert "5684/udp" in text
