"""Rule files: YAML validated with pydantic; errors name the file, the line and the field.

```yaml
timezone: Asia/Shanghai             # for `hours` windows (default UTC)
rules:
  - name: pm25-high                 # one active alert per (rule, subject)
    table: env_readings             # the table whose committed rows the rule reads
    where: metric == "pm2_5"        # which rows (optional)
    when: value > 75                # raise once this held for `for`
    for: 10m
    clear: value < 60               # hysteresis: a separate clear condition (default: not when)
    clear_for: 5m
    severity: warning               # info | warning | critical
```

Every kind but ``absence`` ends in the same condition machine (:mod:`alerts.machine`); a kind
adds columns its ``when`` can use (``rate``, ``unchanged_s``, ``in_zone``, ``aqi_category``,
``speed_kmh``…) and sensible defaults for ``when``/``clear``. Expressions are the safe
language of :mod:`alerts.expr`, checked against the columns when the file is loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from alerts.expr import ExprError, Expression, compile_expr
from core.yamlfile import DocumentError, error_message, line_of, load_document
from decoders.base import TableSpec
from decoders.tables import PARKING_SPACE_STATUS

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_TIMES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*$")

DEVICE_TEXT = ("device_kind", "device_profile", "device_district", "device_road")
DEVICE_NUMBERS = ("device_lat", "device_lon", "device_road_km")
INSTALL_PREFIX = "install_"
SOLAR = ("daylight", "sun_elevation")


def parse_duration(text: str | float) -> float:
    """Seconds in ``90``, ``"30s"``, ``"10m"``, ``"1.5h"``, ``"2d"``."""
    if isinstance(text, int | float):
        return float(text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 1h")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _duration(v: object) -> float:
    if isinstance(v, str | int | float) and not isinstance(v, bool):
        return parse_duration(v)
    raise ValueError("a duration like 30s, 10m, 1h")


class Severity(StrEnum):
    """How loud an alert is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
    severity: Severity = Severity.WARNING
    description: str = ""


class _Machine(_Base):
    """Fields of every kind that ends in the condition machine."""

    where: str | None = None
    when: str | None = None
    for_s: Annotated[float, Field(alias="for", ge=0)] = 0.0
    clear: str | None = None
    clear_for_s: Annotated[float, Field(alias="clear_for", ge=0)] = 0.0
    clear_after_s: Annotated[float | None, Field(alias="clear_after", gt=0)] = None
    value: str | None = Field(
        None, description="expression reported as the alert's value (default per kind)"
    )

    @field_validator("for_s", "clear_for_s", "clear_after_s", mode="before")
    @classmethod
    def _durations(cls, v: object) -> float | None:
        return None if v is None else _duration(v)


class ThresholdRule(_Machine):
    """``when`` held for ``for`` raises; ``clear`` held for ``clear_for`` clears."""

    kind: Literal["threshold"] = "threshold"
    table: str
    when: str


class RateUnit(StrEnum):
    """What the rate of change is per."""

    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"


class RateRule(_Machine):
    """Rate of change of ``of`` per ``per`` between a subject's consecutive rows: ``rate``."""

    kind: Literal["rate"]
    table: str
    when: str
    of: str = "value"
    per: RateUnit = RateUnit.MINUTE
    max_gap_s: Annotated[float, Field(alias="max_gap", gt=0)] = 3600.0

    @field_validator("max_gap_s", mode="before")
    @classmethod
    def _gap(cls, v: object) -> float:
        return _duration(v)


class StaleRule(_Machine):
    """The same value for ``after``: ``unchanged_s`` is how long ``of`` has not changed."""

    kind: Literal["stale"]
    table: str
    after_s: Annotated[float, Field(alias="after", gt=0)]
    of: str = "value"
    tolerance: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("after_s", mode="before")
    @classmethod
    def _after(cls, v: object) -> float:
        return _duration(v)


class GeofenceRule(_Machine):
    """A position inside (or outside) a zone, optionally only within hours: ``in_zone``,
    ``in_hours``."""

    kind: Literal["geofence"]
    table: str = "vehicle_positions"
    zone: str | None = Field(None, description="GeoJSON file (Polygon/MultiPolygon features)")
    polygon: list[tuple[float, float]] | None = Field(None, description="[[lon, lat], ...]")
    inside: bool = True
    hours: str | None = Field(None, description='local time window, e.g. "22:00-06:00"')

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is not None:
            m = _HOURS.match(v)
            if not m or int(m.group(1)) > 24 or int(m.group(3)) > 24:
                raise ValueError(f"{v!r} is not a window like 22:00-06:00")
            if int(m.group(2)) > 59 or int(m.group(4)) > 59:
                raise ValueError(f"{v!r} is not a window like 22:00-06:00")
        return v


class AqiRule(_Machine):
    """HJ 633-2012 air quality index from the six pollutants: ``aqi``, ``aqi_category``
    (1 excellent … 6 severe), ``iaqi_<pollutant>``."""

    kind: Literal["aqi"]
    table: str = "hj212_readings"
    level: Annotated[int, Field(ge=1, le=6)] = 4
    pollutants: dict[str, str] | None = Field(
        None, description="pollutant → factor code (hj212_readings) or metric (env_readings)"
    )
    fields: list[str] = Field(
        default_factory=lambda: ["Avg", "Rtd"], description="HJ 212 fields used"
    )


class AbsenceRule(_Base):
    """No frame from a device for ``after`` (``3x`` = 3 × its profile's report interval;
    default: the profile's offline_after): offline; a frame clears it (back online)."""

    kind: Literal["absence"]
    after: str | float | None = None
    profiles: list[str] | None = None

    @field_validator("after", mode="before")
    @classmethod
    def _after(cls, v: object) -> str | float | None:
        if v is None:
            return None
        if isinstance(v, str) and _TIMES.match(v):
            return v
        return _duration(v)

    def limit(self) -> tuple[float, float]:
        """(multiplier of the report interval, fixed seconds): one of them is 0."""
        if self.after is None:
            return 0.0, 0.0
        if isinstance(self.after, str):
            m = _TIMES.match(self.after)
            assert m is not None
            return float(m.group(1)), 0.0
        return 0.0, float(self.after)


class SectionSpeedRule(_Machine):
    """A tag read at gantry A then gantry B of the same road (positions from the registry's
    ``road``/``road_km``): ``speed_kmh`` over the section, ``limit_kmh`` for its road. An
    alert stays open while the vehicle keeps speeding and clears ``clear_after`` (default
    1 h) after its last speeding section."""

    kind: Literal["section_speed"]
    table: Literal["vehicle_tag_reads"] = "vehicle_tag_reads"
    clear_after_s: Annotated[float | None, Field(alias="clear_after", gt=0)] = 3600.0
    limit_kmh: Annotated[float, Field(gt=0)] = 120.0
    limits: dict[str, float] = Field(default_factory=dict, description="road → limit km/h")
    min_km: Annotated[float, Field(gt=0)] = 0.2
    max_gap_s: Annotated[float, Field(alias="max_gap", gt=0)] = 7200.0

    @field_validator("max_gap_s", mode="before")
    @classmethod
    def _gap(cls, v: object) -> float:
        return _duration(v)


class CongestionRule(_Machine):
    """Median travel time of a section over ``window`` against free flow: ``ratio``,
    ``median_s``, ``samples``, per section (subject ``<gantry A>><gantry B>``)."""

    kind: Literal["congestion"]
    table: Literal["vehicle_tag_reads"] = "vehicle_tag_reads"
    window_s: Annotated[float, Field(alias="window", gt=0)] = 600.0
    free_flow_kmh: Annotated[float, Field(gt=0)] = 80.0
    factor: Annotated[float, Field(gt=1)] = 2.0
    clear_factor: Annotated[float, Field(gt=0)] = 1.5
    min_samples: Annotated[int, Field(ge=1)] = 5
    max_gap_s: Annotated[float, Field(alias="max_gap", gt=0)] = 7200.0
    min_km: Annotated[float, Field(gt=0)] = 0.2

    @field_validator("window_s", "max_gap_s", mode="before")
    @classmethod
    def _gap(cls, v: object) -> float:
        return _duration(v)


class ParkingLotFullRule(_Machine):
    """A parking lot at or above ``percent`` full (default for 5 minutes), per lot (subject
    the lot's id); rows from ``parking_space_status``, the lot's latest per batch."""

    kind: Literal["parking_lot_full"]
    table: Literal["parking_space_status"] = "parking_space_status"
    percent: Annotated[float, Field(gt=0, le=100)] = 95.0
    for_s: Annotated[float, Field(alias="for", ge=0)] = 300.0


class WatchlistRule(_Machine):
    """A listed tag EPC, TID, plate or device id (VIN, phone) seen: raised; cleared after
    ``clear_after`` (default 30 min) without a sighting. The list file is reloaded when it
    changes."""

    kind: Literal["watchlist"]
    list: str = Field(description="file: one identifier per line, # comments")
    tables: tuple[str, ...] = ("vehicle_tag_reads", "ev_status", "vehicle_positions")
    clear_after_s: Annotated[float | None, Field(alias="clear_after", gt=0)] = 1800.0


class FrameLossRule(_Base):
    """A device's frame loss ratio — missing / (received + missing) over ``window`` of the
    hourly counts the loss detector keeps (docs/design/0011-frame-loss.md) — above ``above``
    with at least ``min_frames`` counted: raised; at or below ``clear_below`` (default half
    of ``above``), or nothing counted in the window: cleared. Checked every ``check_every``
    on the wall clock; ``profiles`` filters devices."""

    kind: Literal["frame_loss"]
    window_s: Annotated[float, Field(alias="window", ge=3600)] = 3600.0
    above: Annotated[float, Field(gt=0, lt=1)] = 0.05
    clear_below: Annotated[float | None, Field(ge=0, lt=1)] = None
    min_frames: Annotated[int, Field(ge=1)] = 20
    check_every_s: Annotated[float, Field(alias="check_every", gt=0)] = 60.0
    profiles: list[str] | None = None

    @field_validator("window_s", "check_every_s", mode="before")
    @classmethod
    def _durations(cls, v: object) -> float:
        return _duration(v)

    @property
    def hours(self) -> int:
        """The window in whole hours (the counts are hourly), rounded up."""
        return math.ceil(self.window_s / 3600)

    @property
    def clear_at(self) -> float:
        """The ratio at or below which an open alert clears."""
        return self.above / 2 if self.clear_below is None else self.clear_below


def _kind(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("kind", "threshold"))
    return str(getattr(v, "kind", "threshold"))


AnyRule = Annotated[
    Annotated[ThresholdRule, Tag("threshold")]
    | Annotated[RateRule, Tag("rate")]
    | Annotated[StaleRule, Tag("stale")]
    | Annotated[GeofenceRule, Tag("geofence")]
    | Annotated[AqiRule, Tag("aqi")]
    | Annotated[AbsenceRule, Tag("absence")]
    | Annotated[SectionSpeedRule, Tag("section_speed")]
    | Annotated[CongestionRule, Tag("congestion")]
    | Annotated[WatchlistRule, Tag("watchlist")]
    | Annotated[FrameLossRule, Tag("frame_loss")]
    | Annotated[ParkingLotFullRule, Tag("parking_lot_full")],
    Discriminator(_kind),
]
KINDS = (
    "threshold",
    "rate",
    "stale",
    "geofence",
    "aqi",
    "absence",
    "section_speed",
    "congestion",
    "watchlist",
    "frame_loss",
    "parking_lot_full",
)
# Tables that are not stored but handed to the rules with each batch (parking/occupancy.py).
DERIVED_TABLES: dict[str, TableSpec] = {PARKING_SPACE_STATUS.name: PARKING_SPACE_STATUS}


class RulesFile(BaseModel):
    """The document."""

    model_config = ConfigDict(extra="forbid")
    timezone: str = "UTC"
    rules: list[AnyRule]

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name like Asia/Shanghai)") from None
        return v


# The columns each kind adds (computed for the rows it selects), and its defaults.
DERIVED: dict[str, tuple[str, ...]] = {
    "threshold": (),
    "rate": ("rate",),
    "stale": ("unchanged_s",),
    "geofence": ("in_zone", "in_hours"),
    "aqi": (
        "aqi",
        "aqi_category",
        "iaqi_pm2_5",
        "iaqi_pm10",
        "iaqi_so2",
        "iaqi_no2",
        "iaqi_co",
        "iaqi_o3",
    ),
    "section_speed": ("speed_kmh", "limit_kmh", "distance_km", "travel_s"),
    "congestion": ("ratio", "median_s", "samples", "free_flow_s"),
    "watchlist": ("listed",),
    "parking_lot_full": (),
}


def _defaults(rule: _Machine) -> tuple[str, str | None, str | None]:
    """(when, clear, value) with each kind's defaults filled in."""
    when, clear, value = rule.when, rule.clear, rule.value
    match rule:
        case RateRule():
            value = value or "rate"
        case StaleRule():
            when = when or f"unchanged_s >= {rule.after_s}"
            value = value or "unchanged_s"
        case GeofenceRule():
            zone = "in_zone" if rule.inside else "not in_zone"
            when = when or (f"{zone} and in_hours" if rule.hours else zone)
        case AqiRule():
            when = when or f"aqi_category >= {rule.level}"
            value = value or "aqi"
        case SectionSpeedRule():
            when = when or "speed_kmh > limit_kmh"
            clear = clear or "False"
            value = value or "speed_kmh"
        case CongestionRule():
            when = when or f"ratio > {rule.factor} and samples >= {rule.min_samples}"
            clear = clear or f"ratio < {rule.clear_factor}"
            value = value or "ratio"
        case WatchlistRule():
            when = when or "listed"
            clear = clear or "False"
        case ParkingLotFullRule():
            when = when or f"occupied_pct >= {rule.percent}"
            value = value or "occupied_pct"
    assert when is not None
    return when, clear, value


class CompiledRule:
    """A rule with its expressions compiled against its table's columns, the columns its
    kind derives and the device attributes from the registry."""

    def __init__(self, rule: Any, spec: TableSpec | None, base: Path) -> None:
        self.rule = rule
        self.kind: str = rule.kind
        self.name: str = rule.name
        self.spec = spec
        self.base = base
        self.definition = hashlib.sha256(
            json.dumps(rule.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
        ).hexdigest()[:16]
        """Changes when the rule's definition changes (its saved state is then dropped)."""
        self.where: Expression | None = None
        self.when: Expression | None = None
        self.clear: Expression | None = None
        self.value: Expression | None = None
        self.of: Expression | None = None
        self.for_us = self.clear_for_us = 0
        self.clear_after_us: int | None = None
        if isinstance(rule, _Machine):
            cols = self.columns()
            when, clear, value = _defaults(rule)
            self.where = compile_expr(rule.where, cols) if rule.where else None
            self.when = compile_expr(when, cols)
            self.clear = compile_expr(clear, cols) if clear else None
            if value is None and "value" in cols:
                value = "value"
            self.value = compile_expr(value, cols) if value else None
            if isinstance(rule, RateRule | StaleRule):
                self.of = compile_expr(rule.of, cols)
            self.for_us = int(rule.for_s * 1e6)
            self.clear_for_us = int(rule.clear_for_s * 1e6)
            if rule.clear_after_s is not None:
                self.clear_after_us = int(rule.clear_after_s * 1e6)

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables whose rows this rule reads (none for absence: it reads them all)."""
        if isinstance(self.rule, WatchlistRule):
            return tuple(self.rule.tables)
        if self.spec is not None:
            return (self.spec.name,)
        return ()

    def columns(self) -> list[str]:
        """Names its expressions may use."""
        base = [c for c in self.spec.column_names if c != "device_id"] if self.spec else []
        extra = list(DERIVED.get(self.kind, ()))
        if self.kind == "watchlist":
            base = ["epc", "tid", "plate", "time"]
        return [*base, *extra, *DEVICE_TEXT, *DEVICE_NUMBERS, *SOLAR, "device", "install_*"]

    def names_used(self) -> set[str]:
        """Every name its expressions use."""
        out: set[str] = set()
        for e in (self.where, self.when, self.clear, self.value, self.of):
            if e is not None:
                out |= e.names
        return out

    def path(self, name: str) -> Path:
        """A file the rule names, relative to the rules file."""
        p = Path(name)
        return p if p.is_absolute() else self.base / p


class RuleSet:
    """A validated, compiled rules file."""

    def __init__(self, rules: list[CompiledRule], timezone: str, source: Path | None) -> None:
        self.rules = rules
        self.timezone = timezone
        self.source = source

    def __len__(self) -> int:
        return len(self.rules)


def _is_install(name: str) -> bool:
    return name.startswith(INSTALL_PREFIX) and len(name) > len(INSTALL_PREFIX)


def _loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A validation error's location without the union's tag (``rules.0.rate.per``)."""
    return tuple(p for p in loc if not (isinstance(p, str) and p in KINDS))


def load_rules(path: Path, tables: dict[str, TableSpec]) -> RuleSet:
    """Read, validate and compile a rules file; ``DocumentError`` says file:line: problem."""
    data, node = load_document(path)
    tables = {**tables, **DERIVED_TABLES}
    try:
        doc = RulesFile.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = _loc(tuple(err["loc"]))
            field = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in loc)
            msg = error_message(err, node, loc)
            if err["type"] == "union_tag_invalid":
                msg = f"unknown kind (known: {', '.join(KINDS)})"
                field += ".kind"
            line = line_of(node, loc)
            where = f"{path}:{line}" if line else str(path)
            lines.append(f"{where}: {field.lstrip('.')}: {msg}")
        raise DocumentError("\n".join(lines)) from None
    out: list[CompiledRule] = []
    seen: set[str] = set()
    for i, rule in enumerate(doc.rules):
        where = f"{path}:{line_of(node, ['rules', i])}: rules[{i}]"
        if rule.name in seen:
            raise DocumentError(f"{where}.name: duplicate rule {rule.name!r}")
        seen.add(rule.name)
        spec = None
        table = getattr(rule, "table", None)
        if table is not None:
            spec = tables.get(table)
            if spec is None:
                line = line_of(node, ["rules", i, "table"])
                raise DocumentError(
                    f"{path}:{line}: rules[{i}].table: unknown table {table!r} "
                    f"(known: {', '.join(sorted(tables))})"
                )
        for t in getattr(rule, "tables", ()) if isinstance(rule, WatchlistRule) else ():
            if t not in tables:
                raise DocumentError(f"{where}.tables: unknown table {t!r}")
        try:
            compiled = CompiledRule(rule, spec, path.parent)
        except ExprError as exc:
            field = _failing_field(rule, spec, path.parent)
            line = line_of(node, ["rules", i, field])
            raise DocumentError(f"{path}:{line}: rules[{i}].{field}: {exc}") from None
        _check_files(compiled, f"{where}")
        out.append(compiled)
    return RuleSet(out, doc.timezone, path)


def _check_files(rule: CompiledRule, where: str) -> None:
    r = rule.rule
    if isinstance(r, GeofenceRule):
        if (r.zone is None) == (r.polygon is None):
            raise DocumentError(f"{where}.zone: give a zone file or a polygon (one of them)")
        if r.zone is not None and not rule.path(r.zone).is_file():
            raise DocumentError(f"{where}.zone: no such file {rule.path(r.zone)}")
        if r.polygon is not None and len(r.polygon) < 3:
            raise DocumentError(f"{where}.polygon: a polygon needs at least 3 points")
    if isinstance(r, WatchlistRule) and not rule.path(r.list).is_file():
        raise DocumentError(f"{where}.list: no such file {rule.path(r.list)}")
    if isinstance(r, AqiRule) and r.table not in ("hj212_readings", "env_readings"):
        raise DocumentError(f"{where}.table: aqi reads hj212_readings or env_readings")


def _failing_field(rule: Any, spec: TableSpec | None, base: Path) -> str:
    cols = CompiledRule.__new__(CompiledRule)
    cols.spec, cols.kind = spec, rule.kind
    names = cols.columns()
    when, clear, value = _defaults(rule)
    for field, text in (
        ("where", rule.where),
        ("when", when),
        ("clear", clear),
        ("value", value),
        ("of", getattr(rule, "of", None)),
    ):
        if text:
            try:
                compile_expr(text, names)
            except ExprError:
                return field
    return "value"


def install_keys(rules: list[CompiledRule]) -> list[str]:
    """``install_<key>`` attributes the rules use (numbers from the registry's install)."""
    return sorted(
        {n[len(INSTALL_PREFIX) :] for r in rules for n in r.names_used() if _is_install(n)}
    )
