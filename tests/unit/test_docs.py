"""What the documentation states about the code, checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from device_registry.api import StatusChange
from device_registry.credentials import acl_text
from device_registry.devicerows import FIELDS
from device_registry.upsert import UPDATED_COLUMNS

ROOT = Path(__file__).parents[2]


def _docs() -> list[Path]:
    out = [*ROOT.glob("*.md"), *ROOT.glob("*/README.md"), *ROOT.glob("docs/**/*.md")]
    return [*out, *(p for p in (ROOT / "deploy").rglob("*") if p.is_file())]


def test_every_mosquitto_acl_pattern_quoted_in_the_docs_is_one_the_export_writes() -> None:
    written = set(acl_text("cityflux", None).splitlines())
    quoted = {
        (path.relative_to(ROOT), m.group(0))
        for path in _docs()
        for m in re.finditer(r"pattern (?:read|write) cityflux/[^\s`)]+", path.read_text())
    }
    assert quoted, "no ACL pattern quoted"
    assert {q for q in quoted if q[1] not in written} == set()


def test_the_readme_shows_a_patch_body_the_device_api_accepts() -> None:
    readme = (ROOT / "README.md").read_text()
    calls = re.findall(r"curl [^\n]*-XPATCH [^\n]*/api/v1/devices/[^\n]*-d '([^']+)'", readme)
    assert calls, "README shows no PATCH /api/v1/devices/{id} call"
    for body in calls:
        StatusChange.model_validate_json(body)


def test_the_registry_readme_names_every_import_column() -> None:
    text = (ROOT / "device_registry" / "README.md").read_text()
    section = text.split("## Import file format", 1)[1].split("\n## ", 1)[0]
    assert [f for f in FIELDS if f"`{f}`" not in section] == []
    assert "hex" in section  # the OSCORE fields' encoding


def test_the_registry_readme_names_every_column_that_moves_updated_at() -> None:
    # the latest migration that (re)defines the trigger holds its column list
    defining = [
        p
        for p in sorted((ROOT / "storage" / "migrations").glob("*.sql"))
        if "CREATE TRIGGER devices_touch" in p.read_text()
    ]
    sql = defining[-1].read_text()
    watched = set(re.findall(r"NEW\.(\w+)", sql))
    text = (ROOT / "device_registry" / "README.md").read_text()
    sentence = text.split("`updated_at` moves", 1)[1].split("\n\n", 1)[0]
    # the trigger's columns, and what the import's UPDATE sets it for
    assert [c for c in sorted({*watched, *UPDATED_COLUMNS}) if f"`{c}`" not in sentence] == []
    assert "`last_seen`" in sentence  # said not to move it


def test_the_alerts_readme_describes_every_field_rules_test_prints() -> None:
    text = (ROOT / "alerts" / "README.md").read_text()
    section = text.split("## What `rules test` prints", 1)[1].split("\n## ", 1)[0]
    for field in ("rule", "device", "state", "at", "value", "severity", "details"):
        assert f"`{field}`" in section, field
    for kind in ("section_speed", "geofence", "watchlist"):
        assert f"`{kind}`" in section, kind


def test_the_readme_names_every_metric_alert_and_recording_rule() -> None:
    import yaml

    from core.metrics import Metrics

    readme = (ROOT / "README.md").read_text()
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in readme, f"README's metrics table lacks {name}"
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules/cityflux.yml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        name = rule.get("alert") or rule["record"]
        assert f"`{name}`" in readme, f"README's 'Operating cityflux' lacks {name}"
