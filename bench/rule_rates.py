"""Rule evaluation rate: 20 mixed rules over batches of 10,000 readings, one core.

Each batch holds 10,000 rows of five tables, as a city's mixed traffic would: 6,000
``env_readings`` (750 NB-IoT stations × 8 metrics), 1,000 ``streetlight_status``, 1,500
``vehicle_positions``, 1,000 ``vehicle_tag_reads`` at 20 gantries of two roads, 500
``hj212_readings``. Values drift as random walks so conditions start, hold and clear;
device positions and gantries come from registry attributes loaded up front. The rate is
rows / time of ``Engine.evaluate`` (sorting, selections, machines, events), median of runs.

``python -m bench.rule_rates [--batches N] [--runs N]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from alerts.engine import Engine
from alerts.rules import load_rules
from core.frames import TableRows
from decoders.registry import load_registry

RULES = """
timezone: Asia/Shanghai
rules:
  - name: pm25-high
    {env: pm2_5, when: value > 75, for: 10m, clear: value < 60}
  - name: pm10-high
    {env: pm10, when: value > 150, for: 10m, clear: value < 120}
  - name: temp-high
    {env: temperature, when: value > 38, clear: value < 35}
  - name: temp-low
    {env: temperature, when: value < -5, clear: value > 0}
  - name: humidity-high
    {env: humidity, when: value > 95, for: 30m}
  - name: noise-night
    {env: noise, when: value > 55 and not daylight, for: 5m}
  - name: battery-low
    {env: battery, when: value < 3300, clear: value > 3400}
  - name: signal-weak
    {env: rssi, when: value < -110, for: 1h}
  - name: temp-rising
    {env: temperature, kind: rate, per: hour, when: rate > 10, clear: rate < 2}
  - name: humidity-stuck
    {env: humidity, kind: stale, after: 6h}
  - name: lamp-failure
    {table: streetlight_status, when: "bit(faults, 0)", clear: "not bit(faults, 0)"}
  - name: lamp-no-current
    {table: streetlight_status, when: lamp_on and current_a < 0.05, for: 5m}
  - name: lamp-daylight
    {table: streetlight_status, when: lamp_on and daylight, for: 30m}
  - name: lamp-overheat
    {table: streetlight_status, when: temperature_c > 70, clear: temperature_c < 60}
  - name: zone-entry
    kind: geofence
    polygon: [[114.03, 22.52], [114.08, 22.52], [114.08, 22.56], [114.03, 22.56]]
    hours: "07:00-22:00"
    for: 1m
  - name: overspeed
    {table: vehicle_positions, when: speed_kmh > 100, for: 30s, clear: speed_kmh < 90}
  - name: emergency
    {table: vehicle_positions, when: "bit(alarm, 0)"}
  - name: speeding
    {kind: section_speed, limit_kmh: 100}
  - name: jam
    {kind: congestion, free_flow_kmh: 90, window: 10m}
  - name: aqi
    {kind: aqi, where: field == "Avg", level: 4, for: 1h}
"""


def _rules_yaml() -> str:
    """RULES with the `{env: metric, ...}` shorthand expanded (keeps the lines short)."""
    out = []
    for line in RULES.splitlines():
        stripped = line.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            body = stripped[1:-1]
            if body.startswith("env: "):
                metric, _, rest = body[5:].partition(", ")
                out.append("    table: env_readings")
                out.append(f"    where: 'metric == \"{metric}\"'")
                body = rest
            for part in _split(body):
                out.append(f"    {part}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _split(body: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        depth += ch in "[("
        depth -= ch in "])"
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


ROWS = {
    "env_readings": 6000,
    "streetlight_status": 1000,
    "vehicle_positions": 1500,
    "vehicle_tag_reads": 1000,
    "hj212_readings": 500,
}
METRICS = [b"temperature", b"humidity", b"pm2_5", b"pm10", b"noise", b"battery", b"rssi", b"co2"]
T0 = 1_767_225_600_000_000
MIN = 60_000_000


class Workload:
    """Batches of the five tables, devices drifting over time."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.env_state = self.rng.normal(0, 1, (750, 8))
        self.tags = np.array([f"E2{i:010X}".encode() for i in range(20_000)])
        self.pos = self.rng.integers(0, 10, 20_000)
        self.clock = np.full(20_000, T0, dtype=np.int64)
        self.lamp_on = self.rng.random(1000) < 0.5
        self.lamp_temp = self.rng.normal(45, 5, 1000)
        self.lamp_fault = np.zeros(1000, dtype=np.bool_)
        self.veh_pos = np.column_stack(
            [22.5 + self.rng.random(1500) * 0.1, 114.0 + self.rng.random(1500) * 0.1]
        )
        self.veh_speed = self.rng.normal(60, 20, 1500)
        self.air = self.rng.normal(0, 0.5, (100, 5))

    def batch(self) -> dict[str, TableRows]:
        """The next 10,000 rows (each device one report further in time)."""
        rng, k = self.rng, self.step
        self.step += 1
        t = T0 + k * MIN
        out = {}
        # env: 750 stations × 8 metrics wandering around plausible levels (mean-reverting)
        self.env_state += rng.normal(0, 0.01, self.env_state.shape)
        self.env_state *= 0.999
        base = np.array([25, 60, 50, 90, 45, 3600, -85, 500], dtype=np.float64)
        scale = np.array([5, 15, 30, 50, 8, 200, 15, 100], dtype=np.float64)
        vals = (base + scale * self.env_state).ravel()
        dev = np.repeat(np.arange(1, 751, dtype=np.int32), 8)
        out["env_readings"] = _rows(
            "env_readings",
            dev,
            np.full(6000, t, dtype=np.int64),
            metric=np.tile(np.array(METRICS), 750),
            value=vals,
        )
        # streetlights: on by schedule, a few faults that persist, temperatures drifting
        sl = np.arange(1001, 2001, dtype=np.int32)
        on = self.lamp_on
        self.lamp_temp += rng.normal(0, 0.3, 1000)
        self.lamp_fault |= rng.random(1000) < 0.0005
        out["streetlight_status"] = _rows(
            "streetlight_status",
            sl,
            np.full(1000, t, dtype=np.int64),
            lamp_on=on,
            current_a=np.where(on, 0.4 + rng.normal(0, 0.02, 1000), 0).astype(np.float32),
            faults=self.lamp_fault.astype(np.int32),
            temperature_c=self.lamp_temp.astype(np.int16),
        )
        # vehicles drive: positions move a little each minute, speeds wander
        self.veh_pos += rng.normal(0, 0.0005, self.veh_pos.shape)
        self.veh_speed = np.clip(self.veh_speed + rng.normal(0, 3, 1500), 0, 140)
        vp = np.arange(3001, 4501, dtype=np.int32)
        out["vehicle_positions"] = _rows(
            "vehicle_positions",
            vp,
            np.full(1500, t, dtype=np.int64),
            lat=self.veh_pos[:, 0],
            lon=self.veh_pos[:, 1],
            speed_kmh=self.veh_speed.astype(np.float32),
            alarm=(rng.random(1500) < 0.00005).astype(np.int64),
        )
        # 1,000 vehicles pass their next gantry each minute (2.5 km apart, ~80 ± 12 km/h)
        moving = rng.choice(self.tags.shape[0], 1000, replace=False)
        self.pos[moving] = (self.pos[moving] + 1) % 10
        speed = rng.normal(80, 12, 1000)
        self.clock[moving] = np.maximum(
            self.clock[moving] + (2.5 / speed * 3.6e9).astype(np.int64), t
        )
        road = moving % 2
        gantry = (5001 + road * 10 + self.pos[moving]).astype(np.int32)
        order = np.argsort(self.clock[moving], kind="stable")
        out["vehicle_tag_reads"] = _rows(
            "vehicle_tag_reads",
            gantry[order],
            self.clock[moving][order],
            epc=self.tags[moving][order],
        )
        st = np.repeat(np.arange(6001, 6101, dtype=np.int32), 5)
        self.air += rng.normal(0, 0.02, self.air.shape)
        out["hj212_readings"] = _rows(
            "hj212_readings",
            st,
            np.full(500, t, dtype=np.int64),
            cn=np.full(500, 2061, dtype=np.int16),
            factor=np.tile(np.array([b"a34004", b"a34002", b"a21026", b"a21004", b"a05024"]), 100),
            field=np.full(500, b"Avg"),
            value=np.abs(60 * np.exp(self.air)).ravel(),
            flag=np.full(500, b"N"),
        )
        return out


def _rows(table: str, dev: np.ndarray, t: np.ndarray, **cols: np.ndarray) -> TableRows:
    n = dev.shape[0]
    spec = {s.name: s for s in load_registry().tables()}[table]
    data: dict[str, np.ndarray] = {"time": t, "device_id": dev}
    for c in spec.columns:
        if c.name not in data:
            data[c.name] = cols.get(c.name, np.zeros(n))
    return TableRows(table, data, np.array([b"d%d" % i for i in dev]), np.arange(n, dtype=np.int32))


def engine() -> Engine:
    """The 20 rules, with registry attributes for every device."""
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "rules.yaml"
        f.write_text(_rules_yaml())
        eng = Engine(load_rules(f, {t.name: t for t in load_registry().tables()}))
    attrs: list[dict[str, object]] = [
        {"id": i, "lat": 22.54, "lon": 114.06} for i in range(1, 2001)
    ]
    attrs += [
        {"id": 5001 + g, "external_id": f"G{g}", "road": "G4" if g < 10 else "S1",
         "road_km": float(g % 10) * 2.5}  # ten gantries 2.5 km apart on each road
        for g in range(20)
    ]  # fmt: skip
    eng.attributes.add(attrs)
    return eng


def rate(batches: int) -> tuple[float, int]:
    """Rows per second through ``Engine.evaluate``, and the events produced."""
    eng = engine()
    work = Workload()
    prepared = [work.batch() for _ in range(batches)]
    for b in prepared[:3]:  # warm-up (state arrays grow, caches fill)
        eng.evaluate(b)
    events = 0
    rows = 0
    start = time.perf_counter()
    for b in prepared[3:]:
        events += len(eng.evaluate(b))
        rows += sum(len(r) for r in b.values())
    return rows / (time.perf_counter() - start), events


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bench.rule_rates")
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    runs = [rate(args.batches) for _ in range(args.runs)]
    med = statistics.median(r for r, _ in runs)
    print(
        f"20 mixed rules, batches of 10,000 rows: {med:,.0f} rows/s (median of {args.runs}: "
        f"{', '.join(f'{r:,.0f}' for r, _ in runs)}); "
        f"{runs[0][1] / (args.batches - 3):,.0f} alert events per batch"
    )


if __name__ == "__main__":
    main()
