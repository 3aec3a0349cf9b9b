"""Poison vectors: each is rejected with its reason, alone, in the middle of valid frames."""

from __future__ import annotations

import numpy as np
import pytest

from core.frames import Decoded, FrameBatch
from decoders.guard import screen
from decoders.registry import load_registry
from decoders.tables import ALL_TABLES
from tests.poison import RECEIVED_US, PoisonCase, load_poison_cases, load_valid_golden_frames

REGISTRY = load_registry()
CASES = load_poison_cases()
SPECS = {t.name: t for t in ALL_TABLES}


def _batch(fmt: str, poison: PoisonCase | None) -> tuple[FrameBatch, int]:
    """Valid golden frames, the poison frame in the middle, the valid frames again."""
    valid = load_valid_golden_frames(fmt)
    assert valid, f"{fmt} has no valid golden vector to mix the poison with"
    batch = FrameBatch(fmt, "poison")
    for g in valid:
        batch.append(g.payload, g.source, g.device, "", g.received_us)
    at = len(batch)
    if poison is not None:
        batch.append(poison.payload, poison.source, poison.device, "", RECEIVED_US)
    for g in valid:
        batch.append(g.payload, g.source, g.device, "", g.received_us)
    return batch, at


def _rows_of(decoded: Decoded, frame_map: dict[int, int]) -> dict[str, dict[str, list[object]]]:
    """Every table's columns (and devices, nulls) with frame indexes mapped through frame_map."""
    out: dict[str, dict[str, list[object]]] = {}
    for table, rows in decoded.rows.items():
        keep = np.isin(rows.frame_index, list(frame_map))
        sub = rows.take(keep)
        cols: dict[str, list[object]] = {k: v.tolist() for k, v in sub.columns.items()}
        cols["_devices"] = sub.devices.tolist()
        cols["_frames"] = [frame_map[int(i)] for i in sub.frame_index.tolist()]
        cols.update({f"_null_{k}": v.tolist() for k, v in sub.nulls.items()})
        out[table] = cols
    return out


@pytest.mark.parametrize("case", CASES, ids=[f"{c.format}/{c.name}" for c in CASES])
def test_poison_frame_is_rejected_alone_with_its_reason(case: PoisonCase) -> None:
    decoder = REGISTRY.get(case.format)
    batch, at = _batch(case.format, case)
    out = decoder.decode_batch(batch)
    reasons = [r.reason for r in out.rejects if r.index == at]
    assert len(reasons) == 1, f"poison frame rejected {len(reasons)} times"
    assert reasons[0].startswith(case.reason_prefix), reasons[0]
    assert {r.index for r in out.rejects} == {at}, "a valid neighbour was rejected"
    assert out.frames_ok == len(batch) - 1
    for rows in out.rows.values():
        assert at not in rows.frame_index.tolist(), "the rejected frame produced rows"
    assert all(i != at for i, _ in out.replies)
    assert screen(out, SPECS) is out, "the decoder left rows PostgreSQL would refuse"
    clean, _ = _batch(case.format, None)
    reference = decoder.decode_batch(clean)
    n = len(clean)
    shifted = {i: i for i in range(at)} | {i + 1: i for i in range(at, n)}
    assert _rows_of(out, shifted) == _rows_of(reference, {i: i for i in range(n)})


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_registered_decoder_has_poison_cases(name: str) -> None:
    assert any(c.format == name for c in CASES), f"no poison case for {name}"


def test_every_case_names_its_source_and_a_reason() -> None:
    for c in CASES:
        assert c.reason_prefix.strip(), f"{c.format}/{c.name} has an empty reason"
