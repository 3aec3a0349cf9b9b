"""Scenario files: a fleet, how it reaches cityflux, for how long, and what goes wrong.

A scenario is YAML validated with pydantic; an error names the file, the line and the field
(``city.yaml:14: groups[2].interval_s: Input should be greater than 0``). Example scenarios:
``simulators/scenarios/``; every field is described in ``simulators/README.md``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.yamlfile import DocumentError, describe, load_document
from simulators.models import MODELS, GroupContext

MAX_DEVICES = 1_000_000


class Transport(StrEnum):
    """How a group's frames reach cityflux."""

    MQTT = "mqtt"
    COAP = "coap"


class Faults(BaseModel):
    """Injected faults; each draw is keyed by (seed, device, report), so runs repeat."""

    model_config = ConfigDict(extra="forbid")

    malformed: float = Field(
        0.0, ge=0, le=1, description="fraction of frames truncated (expected dead letters)"
    )
    duplicates: float = Field(0.0, ge=0, le=1, description="fraction of frames sent twice")
    late: float = Field(
        0.0, ge=0, le=1, description="fraction of frames held back and sent `late_s` later"
    )
    late_s: float = Field(60.0, gt=0, description="how late a late frame is sent, seconds")
    drop: float = Field(
        0.0,
        ge=0,
        le=1,
        description="fraction of frames never sent (the device still counts them: frame loss)",
    )
    offline: float = Field(0.0, ge=0, le=1, description="fraction of devices that go silent")
    offline_after_s: float = Field(
        10.0, ge=0, description="device time after the start when they fall silent, seconds"
    )
    offline_for_s: float | None = Field(
        None, gt=0, description="how long they stay silent (default: to the end of the run)"
    )


class Group(BaseModel):
    """Devices of one model, one report interval and one transport."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")] = Field(
        description="group name; also the registry profile of its devices"
    )
    model: str = Field(description="device model: " + ", ".join(MODELS))
    count: int = Field(gt=0, le=MAX_DEVICES, description="devices in the group")
    interval_s: float = Field(gt=0, description="report interval, seconds")
    transport: Transport = Field(Transport.MQTT, description="mqtt or coap")
    qos: Literal[0, 1] = Field(1, description="MQTT QoS")
    confirmable: bool = Field(True, description="CoAP: CON (acknowledged) or NON requests")
    format: str | None = Field(None, description="one of the model's formats (default: its first)")
    kind: str | None = Field(
        None, description="registry kind and topic level (default: the model's)"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="the model's own options")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(f"unknown model {v!r} (known: {', '.join(MODELS)})")
        return v

    @model_validator(mode="after")
    def _check(self) -> Group:
        model = MODELS[self.model]
        if self.format is not None and self.format not in model.formats:
            raise ValueError(
                f"model {self.model} speaks {', '.join(model.formats)}, not {self.format!r}"
            )
        if self.interval_s * 1e6 < model.resolution_us:
            raise ValueError(
                f"interval_s: {self.model} frames carry times to {model.resolution_us / 1e6:g} s"
            )
        return self

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        model = MODELS.get(info.data.get("model", ""))
        if model is not None:
            try:
                model.options.model_validate(v)
            except ValidationError as exc:
                raise ValueError(
                    "; ".join(
                        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                    )
                ) from None
        return v


class City(BaseModel):
    """Where the devices are."""

    model_config = ConfigDict(extra="forbid")

    lat: float = Field(22.543, ge=-90, le=90, description="centre latitude")
    lon: float = Field(114.058, ge=-180, le=180, description="centre longitude")
    radius_km: float = Field(10.0, gt=0, le=200, description="devices are placed within it")
    timezone: str = Field("Asia/Shanghai", description="local time (lamps, rush hours)")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class Scenario(BaseModel):
    """A whole simulated fleet run."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="scenario name (in the report)")
    seed: int = Field(1, ge=0, description="same seed, same devices and frames")
    duration_s: float = Field(gt=0, description="device time the run covers, seconds")
    speed: float | Literal["max"] = Field(
        1.0, description="device time per wall-clock time (1 = real time), or max"
    )
    rate_cap_per_s: float | None = Field(
        None, gt=0, description="at most this many frames a second, all groups together"
    )
    start: datetime | Literal["now"] = Field(
        "now", description="device time of the run's start (a fixed time repeats frames exactly)"
    )
    prefix: str = Field("cityflux", description="MQTT topic prefix (<prefix>/up/…)")
    city: City = Field(default_factory=City)
    faults: Faults = Field(default_factory=Faults)
    groups: list[Group] = Field(min_length=1)

    @field_validator("speed")
    @classmethod
    def _speed(cls, v: float | str) -> float | str:
        if isinstance(v, float | int) and v <= 0:
            raise ValueError("speed must be > 0 or 'max'")
        return v

    @field_validator("start")
    @classmethod
    def _start(cls, v: datetime | str) -> datetime | str:
        if isinstance(v, datetime) and v.tzinfo is None:
            raise ValueError("start needs a UTC offset (e.g. 2026-01-01T08:00:00+08:00)")
        return v

    @model_validator(mode="after")
    def _groups(self) -> Scenario:
        names = [g.name for g in self.groups]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"group names must be distinct: {', '.join(sorted(dup))}")
        total = sum(g.count for g in self.groups)
        if total > MAX_DEVICES:
            raise ValueError(f"{total:,} devices: at most {MAX_DEVICES:,} in a scenario")
        return self

    # -- derived ---------------------------------------------------------------------------
    def start_us(self) -> int:
        """The device-time origin, µs, whole seconds (formats carry whole seconds): for
        ``now``, the next whole second (a real-time run starts sending then)."""
        if self.start == "now":
            return (int(time.time()) + 1) * 1_000_000
        assert isinstance(self.start, datetime)
        return int(self.start.astimezone(UTC).timestamp()) * 1_000_000

    def utc_offset_s(self, start_us: int) -> int:
        """The city's UTC offset at the start (the run is assumed not to cross a DST change)."""
        when = datetime.fromtimestamp(start_us / 1e6, ZoneInfo(self.city.timezone))
        offset = when.utcoffset()
        return int(offset.total_seconds()) if offset else 0

    def contexts(self, start_us: int) -> list[GroupContext]:
        """What each group's model is built from."""
        off = self.utc_offset_s(start_us)
        return [
            GroupContext(
                name=g.name,
                index=i,
                count=g.count,
                interval_us=round(g.interval_s * 1e6),
                seed=self.seed,
                start_us=start_us,
                utc_offset_s=off,
                city_lat=self.city.lat,
                city_lon=self.city.lon,
                city_radius_km=self.city.radius_km,
                format=g.format,
                options=g.options,
            )
            for i, g in enumerate(self.groups)
        ]


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file; ``DocumentError`` names file, line and field."""
    data, node = load_document(path)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise DocumentError(describe(path, node, exc)) from None
