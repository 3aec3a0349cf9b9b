"""``cityflux rules check`` and ``cityflux rules test``: rules against recorded frames, offline.

``test`` decodes the frames with the named decoder, gives each device a stable id, runs the
rules in frame time (batches of 10,000 frames, in file order) and prints one JSON object per
alert event. Nothing touches a database or a broker.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from alerts.engine import Engine
from alerts.rules import CompiledRule, load_rules
from decoders.registry import UnknownDecoderError, load_registry
from ingest.batch import FrameBatch
from ingest.decode_cli import read_frames
from ingest.yamlfile import DocumentError

BATCH = 10_000


def _rules(path: Path) -> list[CompiledRule] | None:
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
    tables = sorted({r.rule.table for r in rules})
    print(f"{path}: {len(rules)} rules OK ({', '.join(tables)})")
    return 0


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat().replace("+00:00", "Z")


def run_test(
    rules_path: Path, fmt: str, source: str, hex_input: bool, path: str, device: str
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
    frames, bad_hex = read_frames(source, hex_input)
    good = [f for i, f in enumerate(frames) if i not in bad_hex]
    engine = Engine(rules)
    ids: dict[bytes, int] = {}
    events = rejected = 0
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    for lo in range(0, len(good), BATCH):
        batch = FrameBatch(fmt, "cli")
        for raw in good[lo : lo + BATCH]:
            batch.append(raw, path, device, "", now_us)
        decoded = decoder.decode_batch(batch)
        rejected += len(decoded.rejects)
        for rows in decoded.rows.values():
            if not len(rows):
                continue
            dev_ids = np.array(
                [ids.setdefault(d, len(ids)) for d in rows.devices.tolist()], dtype=np.int64
            )
            for e in engine.evaluate(rows, dev_ids):
                events += 1
                print(
                    json.dumps(
                        {
                            "rule": e.rule,
                            "device": e.device,
                            "state": e.state,
                            "at": _iso(e.at_us),
                            "value": e.value,
                            "severity": e.severity,
                        }
                    )
                )
    print(
        f"{len(frames)} frames ({rejected + len(bad_hex)} rejected), {events} alert events",
        file=sys.stderr,
    )
    return 0
