"""``cityflux rules check`` and ``cityflux rules test``: rules against recorded frames, offline.

``test`` decodes the frames with the named decoder, gives each device a stable id (devices
named in ``--devices`` first, in file order), runs the rules in frame time (frames decoded
10,000 at a time, in file order; the clock-driven checks — offline devices, ``clear_after`` —
run as the frames' time passes the moment each falls due, :mod:`alerts.frameclock`, so where
those batches end changes nothing) and prints one JSON object per alert event. ``--devices``
(the import format) gives rules their registry attributes (location, road position, install
values); ``--profiles`` the report intervals absence rules need. Nothing touches a database
or a broker.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from alerts.attributes import DeviceAttributes
from alerts.engine import AlertEvent, Engine
from alerts.frameclock import FrameClock
from alerts.rules import RuleSet, install_keys, load_rules
from core.framefile import read_frames
from core.frames import FrameBatch
from core.yamlfile import DocumentError
from decoders.registry import UnknownDecoderError, load_registry
from device_registry.importer import ImportFormatError, read_devices
from device_registry.profiles import load_profiles

BATCH = 10_000


def _rules(path: Path) -> RuleSet | None:
    try:
        return load_rules(path, {t.name: t for t in load_registry().tables()})
    except DocumentError as exc:
        print(f"cityflux: {exc}", file=sys.stderr)
        return None


def run_check(path: Path) -> int:
    """Validate a rules file; print a one-line summary."""
    rules = _rules(path)
    if rules is None:
        return 2
    tables = sorted({t for r in rules.rules for t in r.tables} or {"-"})
    print(f"{path}: {len(rules)} rules OK ({', '.join(tables)})")
    return 0


def iso(us: int) -> str:
    """µs since the epoch as ISO 8601 UTC with a Z."""
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat().replace("+00:00", "Z")


class _Devices:
    """Stable internal ids for the external ids met, and their attributes."""

    def __init__(self, attributes: DeviceAttributes) -> None:
        self.ids: dict[bytes, int] = {}
        self.names: dict[int, str] = {}
        self.attributes = attributes

    def id_of(self, ext: bytes) -> int:
        got = self.ids.get(ext)
        if got is None:
            got = self.ids[ext] = len(self.ids) + 1
            self.names[got] = ext.decode(errors="replace")
        return got

    def load(self, devices: Path, profiles: Path | None) -> None:
        intervals: dict[str, tuple[float, float]] = {}
        if profiles is not None:
            for p in load_profiles(profiles):
                intervals[p.name] = (p.report_interval_s, p.report_interval_s * p.offline_after)
        rows, result = read_devices(devices, dict.fromkeys(intervals, "") or _AnyProfile())
        for err in result.errors:
            print(f"{devices}:{err.line}: {err.field}: {err.message}", file=sys.stderr)
        out: list[dict[str, Any]] = []
        for i in range(len(rows)):
            rec: dict[str, Any] = {k: v[i].decode() for k, v in rows.text.items()}
            rec.update({k: float(v[i]) for k, v in rows.numbers.items()})
            rec["id"] = self.id_of(rows.text["external_id"][i])
            interval = intervals.get(rec.get("profile") or "")
            if interval:
                rec["report_interval_s"], rec["offline_after_s"] = interval
            out.append(rec)
        self.attributes.load_rows(out)


class _AnyProfile(dict[str, str]):
    """Without a profiles file, any profile name in the devices file is accepted."""

    def __contains__(self, key: object) -> bool:
        return True

    def get(self, key: str, default: Any = None) -> Any:
        return "unknown"


def _print(e: AlertEvent, devices: _Devices) -> None:
    subject = e.subject
    if subject is None and e.device_id is not None:
        subject = devices.names.get(e.device_id, str(e.device_id))
    out: dict[str, Any] = {
        "rule": e.rule,
        "device": subject,
        "state": e.state,
        "at": iso(e.at_us),
        "value": e.value,
        "severity": e.severity,
    }
    if e.details:
        out["details"] = e.details
    print(json.dumps(out))


def run_test(
    rules_path: Path,
    fmt: str,
    source: str,
    hex_input: bool,
    path: str,
    device: str,
    devices_file: Path | None = None,
    profiles_file: Path | None = None,
) -> int:
    """Decode frames, run the rules, print the alert events; return the exit code."""
    rules = _rules(rules_path)
    if rules is None:
        return 2
    try:
        decoder = load_registry().get(fmt)
    except UnknownDecoderError as exc:
        print(f"cityflux: {exc}", file=sys.stderr)
        return 2
    engine = Engine(rules, DeviceAttributes(install_keys(rules.rules)))
    devices = _Devices(engine.attributes)
    if devices_file is not None:
        try:
            devices.load(devices_file, profiles_file)
        except (ImportFormatError, DocumentError) as exc:
            print(f"cityflux: {exc}", file=sys.stderr)
            return 2
    frames, bad_hex = read_frames(source, hex_input)
    good = [f for i, f in enumerate(frames) if i not in bad_hex]
    clock = FrameClock(engine)
    events = rejected = 0
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    for lo in range(0, len(good), BATCH):
        batch = FrameBatch(fmt, "cli")
        for raw in good[lo : lo + BATCH]:
            batch.append(raw, path, device, "", now_us)
        decoded = decoder.decode_batch(batch)
        rejected += len(decoded.rejects)
        tables = {}
        for name, rows in decoded.rows.items():
            if len(rows):
                ids = [devices.id_of(d) for d in rows.devices.tolist()]
                rows.columns["device_id"] = np.array(ids, dtype=np.int32)
                tables[name] = rows
        found = clock.advance(tables)
        for e in found:
            _print(e, devices)
        events += len(found)
    found = clock.finish()
    for e in found:
        _print(e, devices)
    events += len(found)
    print(
        f"{len(frames)} frames ({rejected + len(bad_hex)} rejected), {events} alert events",
        file=sys.stderr,
    )
    return 0
