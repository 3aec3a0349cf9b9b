"""A scenario's fleet as registry files: profiles (YAML), devices (CSV), parking lots (CSV),
watch list.

``cityflux simulate SCENARIO --write-devices devices.csv`` writes them; ``cityflux profiles
import`` and ``cityflux devices import`` (or ``simulate --register``) register the fleet. Each
group becomes a profile named after it (devices of unknown ids are rejected, so a frame from a
device the scenario did not register shows up as ``unknown_device`` in the report).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml

from simulators.models import MODELS
from simulators.run import FleetRun
from simulators.scenario import Scenario

COLUMNS = (
    *("external_id", "profile", "kind", "district", "lat", "lon", "road", "road_km", "install"),
    *("lot", "space"),
)
_EXTRA_TABLES = {"hj212_readings": ["device_status"], "ev_status": ["vehicle_positions"]}


def profiles(scenario: Scenario, run: FleetRun) -> list[dict[str, Any]]:
    """One profile per group."""
    out = []
    for g, model, kind in zip(scenario.groups, run.models, run.kinds, strict=True):
        table = MODELS[g.model].table
        out.append(
            {
                "name": g.name,
                "kind": kind,
                "decoder": model.format,
                "description": f"simulated {g.model} ({scenario.name})",
                "report_interval_s": max(1, math.ceil(g.interval_s)),
                "offline_after": 3,
                "tables": [table, *_EXTRA_TABLES.get(table, [])],
                "unknown_devices": "reject",
            }
        )
    return out


def write_profiles(path: Path, scenario: Scenario, run: FleetRun) -> int:
    """The profiles file; returns how many profiles."""
    items = profiles(scenario, run)
    path.write_text(
        f"# Profiles of scenario {scenario.name!r} (cityflux simulate --write-devices)\n"
        + yaml.safe_dump({"profiles": items}, sort_keys=False, allow_unicode=True)
    )
    return len(items)


def write_devices(path: Path, scenario: Scenario, run: FleetRun) -> int:
    """The devices file (CSV in the import format); returns how many devices."""
    n = 0
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(COLUMNS)
        for g, model, kind, ids in zip(
            scenario.groups, run.models, run.kinds, run.ids, strict=True
        ):
            cols = model.registry_rows()
            for i, ext in enumerate(ids):
                out.writerow(
                    [ext, g.name, kind]
                    + [_cell(cols.get(c), i) for c in ("district", "lat", "lon", "road", "road_km")]
                    + [_cell(cols.get("install"), i)]
                    + [_cell(cols.get(c), i) for c in ("lot", "space")]
                )
            n += len(ids)
    return n


def write_lots(path: Path, run: FleetRun) -> int:
    """The parking lots the groups' space sensors are in (``cityflux parking import-lots``
    format); returns how many lots."""
    lots: list[dict[str, Any]] = []
    for model in run.models:
        of = getattr(model, "lots", None)
        if of is not None:
            lots += of()
    with path.open("w", newline="") as fh:
        out = csv.DictWriter(fh, ["lot", "name", "capacity", "lat", "lon"])
        out.writeheader()
        out.writerows(lots)
    return len(lots)


def write_watchlist(path: Path, scenario: Scenario, run: FleetRun) -> int:
    """The watch-listed tags the gantry groups will show (for the watchlist rule)."""
    tags: list[str] = []
    for model in run.models:
        watch = getattr(model, "watchlist", None)
        if watch is not None:
            tags += watch(scenario.duration_s)
    path.write_text(
        "# watch-listed tags of scenario " + scenario.name + "\n" + "\n".join(tags) + "\n"
    )
    return len(tags)


def _cell(values: list[Any] | None, i: int) -> str:
    return "" if values is None else str(values[i])
