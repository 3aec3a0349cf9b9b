"""The `cityflux` command as a user runs it: help, config errors, migrate, decode, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from decoders.nbiot_env import encode_frame
from decoders.registry import load_registry
from storage.migrate import TimescaleMode, migrate
from tests.helpers import query

CLI = [sys.executable, "-m", "cityflux"]


def _run(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CITYFLUX_")}
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**base, **(env or {})},
        timeout=timeout,
        check=False,
    )


def test_help_lists_every_command() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for command in ("serve", "demo", "db", "decode"):
        assert command in out.stdout
    assert "migrate" in _run("db", "--help").stdout


def test_invalid_config_names_field_and_source_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[pipeline]\nflush_interval_ms = 0\n")
    out = _run("db", "migrate", "-c", str(cfg))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "cityflux: invalid configuration:\n  pipeline.flush_interval_ms: Input should be "
        f"greater than or equal to 1 (from config file {cfg})"
    )
    out = _run("serve", env={"CITYFLUX_MQTT__QOS": "2"})
    assert out.returncode == 2
    assert (
        "mqtt.qos: Input should be 0 or 1 (from environment variable CITYFLUX_MQTT__QOS)"
        in out.stderr
    )


def test_db_migrate_creates_the_schema(pg_url: str) -> None:
    out = _run("db", "migrate", env={"CITYFLUX_DATABASE__URL": pg_url})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "schema up to date (backend: postgresql)"
    assert query(
        pg_url, "SELECT to_regclass('env_readings')::text, to_regclass('dead_letters')::text"
    ) == [("env_readings", "dead_letters")]


def test_devices_command_queues_an_lwm2m_write_audited_and_refuses_nonsense(pg_url: str) -> None:
    env = {"CITYFLUX_DATABASE__URL": pg_url}
    migrate(pg_url, load_registry().tables(), TimescaleMode.OFF)
    query(pg_url, "INSERT INTO devices (external_id, kind) VALUES ('lamp-9', 'streetlight')")
    out = _run("devices", "command", "lamp-9", "write", "/3311/0/5851", "40", env=env)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert (row["device"], row["operation"], row["path"], row["value"], row["state"]) == (
        "lamp-9",
        "write",
        "/3311/0/5851",
        "40",
        "queued",
    )
    bad_path = _run("devices", "command", "lamp-9", "execute", "/3311/0", env=env)
    assert (bad_path.returncode, bad_path.stderr.strip()) == (
        2,
        "cityflux: path '/3311/0' is not /object/instance/resource",
    )
    assert query(pg_url, "SELECT action, target, after->>'path' FROM audit_log") == [
        ("device.command", "lamp-9", "/3311/0/5851")
    ]


def test_decode_prints_one_json_object_per_frame() -> None:
    frame = encode_frame(
        861234567890123,
        1_767_225_600,
        1,
        temperature=-4.25,
        humidity=80,
        pm2_5=35.5,
        pm10=60,
        noise=55.5,
        battery=3300,
        rssi=-101,
    )
    out = _run(
        "decode",
        "--format",
        "nbiot-env",
        "--hex",
        "-",
        stdin=f"{frame.hex()}\nzz\n{frame[:10].hex()}\n",
    )
    assert out.returncode == 0
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert lines[0]["ok"] is True
    assert lines[0]["records"][0] == {
        "table": "env_readings",
        "device": "861234567890123",
        "time": "2026-01-01T00:00:00+00:00",
        "metric": "temperature",
        "value": -4.25,
    }
    assert lines[1] == {
        "ok": False,
        "error": "hex_invalid: non-hexadecimal number found in fromhex() arg at position 0",
    }
    assert lines[2] == {"ok": False, "error": "truncated: need 32 bytes, got 10"}
    assert out.stderr.strip() == "3 frames: 1 decoded, 2 rejected"


def test_decode_unknown_format_is_a_clear_error() -> None:
    out = _run("decode", "--format", "nope", stdin="")
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "cityflux: unknown format 'nope' (known: gbt32960, hj212, jt808, llrp, lwm2m-rd, "
        "lwm2m-tlv, nbiot-env, parking-sensor, senml-cbor, senml-json, streetlight, tagread-json, "
        "value)"
    )


def _assert_demo_accounted(summary: dict) -> None:
    """Every frame the fleet sent is either stored, or rejected because it was built broken."""
    assert summary["lost"] == 0
    assert summary["sent"] > 1000
    assert summary["acknowledged"] == summary["sent"]
    assert summary["stored"] == summary["expected_stored"] > 0
    assert summary["rejected_unexpected"] == 0
    assert summary["rejected_expected"] == summary["malformed_sent"]
    assert summary["duplicates_stored"] == 0
    assert summary["rows_stored"] > summary["stored"]
    assert summary["latency_s"]["p50"] is not None
    assert not summary["stopped_early"]
    assert summary["database"].startswith("embedded PostgreSQL")
    for name, group in summary["groups"].items():
        assert group["lost"] == 0, name
        assert group["stored"] == group["expected"], name


def test_demo_runs_with_embedded_services_and_loses_nothing(tmp_path: Path) -> None:
    out = _run("demo", "--duration", "3", "--json", "--data-dir", str(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    _assert_demo_accounted(summary)
    assert summary["broker"].startswith("embedded ")
    assert summary["broker_dropped"] in (0, None)  # None: the broker has no $SYS counters


def test_demo_over_coap_answers_every_frame_after_its_commit(tmp_path: Path) -> None:
    out = _run(
        "demo", "--duration", "3", "--transport", "coap", "--json", "--data-dir", str(tmp_path),
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    _assert_demo_accounted(summary)  # every CON answered 2.04 or 4.00 counts as acknowledged
    assert summary["broker_dropped"] is None  # no frame went through the broker
