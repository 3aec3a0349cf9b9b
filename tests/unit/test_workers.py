"""What each worker of `cityflux serve --workers N` is told (ingest/workers.py)."""

from __future__ import annotations

import json
import logging

from core.logformat import JsonFormatter
from ingest.settings import load_settings
from ingest.workers import worker_settings


def test_each_worker_has_its_own_client_id_and_http_port_in_one_shared_group() -> None:
    s = load_settings(None, workers=3, mqtt={"client_id": "ingest"}, http={"port": 9108})
    got = [worker_settings(s, i) for i in range(3)]
    assert [w.mqtt.client_id for w in got] == ["ingest-w0", "ingest-w1", "ingest-w2"]
    assert {w.mqtt.shared_group for w in got} == {"cityflux"}
    assert [w.http.port for w in got] == [9108, 9109, 9110]
    # the fleet-wide device gauges are counted once, by worker 0
    assert [w.registry.status_interval_s for w in got] == [300.0, 0.0, 0.0]


def test_a_configured_group_and_any_free_port_are_kept() -> None:
    s = load_settings(None, workers=2, mqtt={"shared_group": "city-a"}, http={"port": 0})
    w = worker_settings(s, 1)
    assert (w.mqtt.shared_group, w.http.port) == ("city-a", 0)


def test_a_retiring_worker_runs_no_rules() -> None:
    s = load_settings(None, alerts={"rules_file": "rules.yaml"})
    assert worker_settings(s, 0).alerts.rules_file is not None
    assert worker_settings(s, 1, retire=True).alerts.rules_file is None


def test_a_worker_log_line_names_the_worker() -> None:
    record = logging.LogRecord("ingest.service", logging.INFO, __file__, 1, "stopping", (), None)
    assert json.loads(JsonFormatter(worker=1).format(record))["worker"] == 1
    assert "worker" not in json.loads(JsonFormatter().format(record))
