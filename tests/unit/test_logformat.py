"""Log lines for shippers: ``log_format = "json"`` writes one object per line."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from core.logformat import TEXT_FORMAT, JsonFormatter, LogFormat, frame_fields
from ingest.settings import ConfigError, load_settings


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("ingest.pipeline", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    record.created = 1_767_225_600.25
    return record


def test_a_json_line_has_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(_record("database unreachable (%s); /readyz says 503", "x"))
    assert json.loads(line) == {
        "time": "2026-01-01T00:00:00.250+00:00",
        "level": "WARNING",
        "logger": "ingest.pipeline",
        "message": "database unreachable (x); /readyz says 503",
    }


def test_a_json_line_about_a_frame_names_its_transport_device_and_format() -> None:
    extra = frame_fields("mqtt", "861000000000001", "nbiot-env")
    line = json.loads(JsonFormatter().format(_record("frame fails alone", **extra)))
    assert (line["transport"], line["device"], line["format"]) == (
        "mqtt",
        "861000000000001",
        "nbiot-env",
    )
    assert frame_fields(transport="coap") == {"transport": "coap"}


def test_a_json_line_stays_one_line_with_newlines_and_tracebacks() -> None:
    try:
        raise ValueError("bad\nframe")
    except ValueError:
        record = _record("rules file rejected:\n%s", "rules.yaml:3: when: unknown column")
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["message"] == "rules file rejected:\nrules.yaml:3: when: unknown column"
    assert obj["exception"].startswith("Traceback")
    assert obj["exception"].endswith("ValueError: bad\nframe")


def test_text_stays_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().log_format is LogFormat.TEXT
    assert TEXT_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"
    monkeypatch.setenv("CITYFLUX_LOG_FORMAT", "json")
    assert load_settings().log_format is LogFormat.JSON


def test_an_unknown_log_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYFLUX_LOG_FORMAT", "logfmt")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value) == (
        "invalid configuration:\n  log_format: Input should be 'text' or 'json' "
        "(from environment variable CITYFLUX_LOG_FORMAT)"
    )
