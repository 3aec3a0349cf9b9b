"""Configuration errors name the field and where the value came from."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cityflux.config_doc import example_toml, markdown_table
from core.mqtt import QoS
from ingest.settings import ConfigError, load_settings

EXAMPLE = Path(__file__).parents[2] / "deploy" / "cityflux.example.toml"


def test_defaults_need_no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.mqtt.qos is QoS.AT_LEAST_ONCE
    assert s.pipeline.batch_max_frames == 5000
    assert s.pipeline.flush_interval_ms == 200


def test_environment_error_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYFLUX_MQTT__PORT", "abc")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value) == (
        "invalid configuration:\n  mqtt.port: Input should be a valid integer, unable to "
        "parse string as an integer (from environment variable CITYFLUX_MQTT__PORT)"
    )


def test_file_errors_name_field_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[mqtt]\nport = 70000\n[pipeline]\nbatch_size = 3\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert str(exc.value) == (
        "invalid configuration:\n"
        f"  mqtt.port: Input should be less than or equal to 65535 (from config file {cfg})\n"
        f"  pipeline.batch_size: Extra inputs are not permitted (from config file {cfg})"
    )


def test_lwm2m_server_without_coap_is_refused_at_start(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[lwm2m]\nmode = "server"\nobserve = { thermo = ["/3303/0/5700"] }\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert str(exc.value) == (
        "invalid configuration:\n"
        f"  lwm2m.mode = server needs coap.mode = open or oscore, or coap.dtls "
        f"(from config file {cfg})"
    )
    ok = load_settings(cfg, coap={"mode": "open"})
    assert ok.lwm2m.observe == {"thermo": ["/3303/0/5700"]}
    dtls_only = load_settings(cfg, coap={"mode": "off", "dtls": "psk"})  # LwM2M over coaps://
    assert dtls_only.lwm2m.mode.value == "server"
    with pytest.raises(ConfigError, match=r"2 workers cannot run lwm2m\.mode = server"):
        load_settings(cfg, coap={"mode": "open"}, workers=2)


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mqtt]\nhost = "broker.example"\nport = 1884\n')
    monkeypatch.setenv("CITYFLUX_MQTT__PORT", "1999")
    s = load_settings(cfg)
    assert (s.mqtt.host, s.mqtt.port) == ("broker.example", 1999)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match=rf"^{cfg}: invalid TOML: "):
        load_settings(cfg)


def test_shipped_example_config_is_current_and_its_values_are_the_defaults(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    assert text == example_toml(), "run: python -m cityflux.config_doc"
    assert load_settings(EXAMPLE) == load_settings()
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(
        "\n".join(
            line[2:] if line.startswith("# ") and " = " in line else line
            for line in text.splitlines()
            if not line.endswith(" =")
        )
    )
    data = tomllib.loads(uncommented.read_text())
    assert set(data) == {
        *("mqtt", "coap", "lwm2m", "database", "pipeline", "registry", "alerts", "parking"),
        "http",
        *("log_level", "log_format", "workers"),
    }
    assert load_settings(uncommented) == load_settings()


def test_readme_configuration_table_is_current() -> None:
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    assert markdown_table() in readme, "run: python -m cityflux.config_doc"
