"""Simulated devices speak the real wire formats, and the same seed gives the same frames."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.frames import FrameBatch
from decoders.registry import load_registry
from simulators.keyed import uniform
from simulators.models import MODELS, GroupContext
from simulators.run import _corrupt
from simulators.schedule import Schedule

START_US = 1_767_225_600_000_000 + 9 * 3_600_000_000  # 2026-01-01 09:00 UTC (17:00 Beijing)
CASES = [(name, fmt) for name, cls in MODELS.items() for fmt in cls.formats]


def _model(name: str, fmt: str, seed: int = 7, count: int = 20, start_us: int = START_US):  # type: ignore[no-untyped-def]
    cls = MODELS[name]
    ctx = GroupContext(
        name=f"g-{name}",
        index=3,
        count=count,
        interval_us=1_000_000 if name == "gantry" else 60_000_000,
        seed=seed,
        start_us=start_us,
        utc_offset_s=8 * 3600,
        city_lat=22.543,
        city_lon=114.058,
        city_radius_km=10,
        format=fmt,
    )
    return cls(ctx, cls.options())  # type: ignore[call-arg]


def _decode(model, frames):  # type: ignore[no-untyped-def]
    ids = model.external_ids()
    batch = FrameBatch(model.format, "test")
    for payload, dev in zip(frames.payloads, frames.devices.tolist(), strict=True):
        batch.append(payload, f"sim/up/{model.kind}/{ids[dev]}/{model.format}", ids[dev], "", 0)
    return load_registry().get(model.format).decode_batch(batch)


@pytest.mark.parametrize(("name", "fmt"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_every_frame_decodes_and_carries_the_key_the_accounting_looks_for(
    name: str, fmt: str
) -> None:
    model = _model(name, fmt)
    frames = model.frames(0, (120 if name == "gantry" else 3600) * 1_000_000)
    assert len(frames) > 10
    out = _decode(model, frames)
    assert out.rejects == []
    rows = out.rows[model.table]
    ids = model.external_ids()
    first: dict[int, int] = {}
    for fi, t in zip(rows.frame_index.tolist(), rows.columns["time"].tolist(), strict=True):
        first[fi] = min(first.get(fi, t), t)
    assert [first[i] for i in range(len(frames))] == frames.times_us.tolist()
    assert {rows.devices[j].decode() for j in range(len(rows))} <= set(ids)
    by_frame = {int(rows.frame_index[j]): rows.devices[j].decode() for j in range(len(rows))}
    assert all(by_frame[i] == ids[d] for i, d in enumerate(frames.devices.tolist()))


@pytest.mark.parametrize(("name", "fmt"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_a_corrupted_frame_is_rejected_by_its_decoder(name: str, fmt: str) -> None:
    model = _model(name, fmt)
    frames = model.frames(0, (120 if name == "gantry" else 600) * 1_000_000)
    bad = type(frames)(
        [_corrupt(p) for p in frames.payloads], frames.devices, frames.seqs, frames.times_us
    )
    out = _decode(model, bad)
    assert len(out.rejects) == len(frames)


@pytest.mark.parametrize(("name", "fmt"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_frames_do_not_depend_on_how_the_run_is_cut_into_windows(name: str, fmt: str) -> None:
    model = _model(name, fmt)
    end = 30_000_000
    whole = model.frames(0, end)
    cuts = [0, 20_000, 1_000_000, 7_333_333, 7_333_334, 29_000_000, end]
    parts = [model.frames(a, b) for a, b in itertools.pairwise(cuts)]
    pieces = sorted(p for part in parts for p in part.payloads)
    assert pieces == sorted(whole.payloads)


def test_the_same_seed_gives_the_same_devices_and_frames_another_seed_others() -> None:
    a, b, c = (_model("nbiot-senml", "senml-json", seed=s) for s in (5, 5, 6))
    assert a.external_ids() == b.external_ids() != c.external_ids()
    fa, fb, fc = (m.frames(0, 600_000_000) for m in (a, b, c))
    assert fa.payloads == fb.payloads
    assert fa.payloads != fc.payloads


def test_streetlights_burn_at_night_and_are_off_by_day() -> None:
    night = _model("streetlight", "streetlight", count=200, start_us=START_US + 4 * 3_600_000_000)
    day = _model("streetlight", "streetlight", count=200, start_us=START_US - 8 * 3_600_000_000)
    lit = [
        _decode(m, m.frames(0, 600_000_000)).rows["streetlight_status"].columns["lamp_on"].mean()
        for m in (night, day)
    ]
    assert lit[0] > 0.99  # 21:00 Beijing: dark (day-burners aside, all on)
    assert lit[1] < 0.02  # 09:00 Beijing: daylight (only day-burners)


def _section_speeds(start_us: int) -> list[float]:
    """Speeds of the vehicles read at gantry 00 then 01 of road G4 (2.5 km apart)."""
    model = _model("gantry", "tagread-json", count=20, start_us=start_us)
    rows = _decode(model, model.frames(0, 3_600_000_000)).rows["vehicle_tag_reads"]
    reads = list(
        zip(
            rows.columns["epc"].tolist(),
            rows.columns["time"].tolist(),
            rows.devices.tolist(),
            strict=True,
        )
    )
    g0 = {e: t for e, t, d in reads if d.endswith(b"G4-00")}
    return [2.5 / ((t - g0[e]) / 3.6e9) for e, t, d in reads if d.endswith(b"G4-01") and e in g0]


def test_gantry_section_speeds_follow_the_traffic_and_slow_down_in_rush_hour() -> None:
    calm = _section_speeds(START_US - 7 * 3_600_000_000)  # 10:00-11:00 Beijing
    rush = _section_speeds(START_US + 1 * 3_600_000_000)  # 18:00-19:00 Beijing, rush hour
    assert len(calm) > 1000  # 1,800 vehicles an hour enter each road
    assert len(rush) > 1.5 * len(calm)  # and 1.8 times as many in rush hours
    assert 75 < float(np.median(calm)) < 85  # 80 ± 12 km/h
    assert 30 < float(np.median(rush)) < 42  # × 0.45
    assert 0.005 < np.mean(np.array(calm) > 100) < 0.1  # speeders: 2 % at 1.4×, and the tail


def test_keyed_draws_are_pure_functions_of_their_keys() -> None:
    u = uniform(1, 2, np.arange(1000), 5)
    assert ((u >= 0) & (u < 1)).all()
    assert np.array_equal(u, uniform(1, 2, np.arange(1000), 5))
    assert not np.array_equal(u, uniform(1, 2, np.arange(1000), 6))
    assert abs(float(u.mean()) - 0.5) < 0.05


def _triples(due: Any) -> list[tuple[int, int, int]]:
    return list(zip(due.devices.tolist(), due.seqs.tolist(), due.times_us.tolist(), strict=True))


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 50),
    interval_s=st.integers(1, 90),
    cuts=st.lists(st.integers(1, 400_000_000), max_size=12),
    seed=st.integers(0, 2**32),
)
def test_schedule_yields_every_report_once_however_the_windows_are_cut(
    count: int, interval_s: int, cuts: list[int], seed: int
) -> None:
    iv = interval_s * 1_000_000
    sched = Schedule(count, iv, 1_000_000, seed, "g")
    end = 400_000_000
    bounds = [0, *sorted(set(cuts)), end]
    got = [
        (d, k, t) for a, b in itertools.pairwise(bounds) for d, k, t in _triples(sched.due(a, b))
    ]
    phase = sched.phase_us(np.arange(count)).tolist()
    want = [
        (d, k, phase[d] + k * iv)
        for d in range(count)
        for k in range(end // iv + 1)
        if phase[d] + k * iv <= end
    ]
    assert sorted(got) == sorted(want)
    assert all(iv >= p >= 1_000_000 and p % 1_000_000 == 0 for p in phase)


def test_parking_lots_hold_what_the_services_debounce_makes_of_their_sensors_reports() -> None:
    from decoders.parking import DECODER as PARKING
    from parking.debounce import Debounce, step
    from simulators.models.parking import ParkingSpace

    model = _model("parking-space", "parking-sensor", count=60)
    assert isinstance(model, ParkingSpace)
    model.opts.match_at_s = 1800.0  # the stadium lot (lot 0) fills half an hour in
    rule = Debounce()  # the service's defaults: two reports
    states: dict[int, Any] = {}
    flaps = 0
    for a in range(0, 4 * 3600, 600):  # four hours, ten minutes at a time, in send order
        frames = model.frames(a * 1_000_000, (a + 600) * 1_000_000)
        out = _decode(model, frames).rows["parking_readings"]
        assert len(out) == len(frames)
        occupied = out.columns["occupied"].tolist()
        for d, t, occ in zip(
            frames.devices.tolist(), frames.times_us.tolist(), occupied, strict=True
        ):
            states[d] = step(states.get(d), t, occ, rule)
        held = [
            sum(states[d].occupied for d in range(60) if model.lot_of[d] == k and d in states)
            for k in range(model.opts.lots)
        ]
        assert [x["occupied"] for x in model.lots_at((a + 600) * 1_000_000)] == held
        flaps = sum(s.flaps for s in states.values())
    assert flaps > 0  # spurious flips were sent and suppressed
    assert sum(s.changes for s in states.values()) > 20
    stadium = model.lots_at(3 * 3600 * 1_000_000)[0]  # the match is on
    assert stadium["occupied"] >= stadium["capacity"] - 1
    assert PARKING.name == model.format
