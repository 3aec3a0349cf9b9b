"""What every simulated device model provides, and helpers the models share.

A model turns a window of device time into frames in the real wire format of its decoder.
Contract: ``frames`` is a pure function of the window and the model's construction arguments
(same seed, same frames, however the run is cut into windows); it never does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from decoders.crc import crc16_ccitt_false
from simulators.keyed import stream_id, uniform

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

# Shenzhen's districts: where a simulated device is registered
DISTRICTS = (
    "futian", "luohu", "nanshan", "baoan", "longgang", "yantian", "longhua", "pingshan",
    "guangming",
)  # fmt: skip


class Options(BaseModel):
    """A model's own options (``groups[i].options`` in the scenario); none by default."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class GroupContext:
    """Everything a model is built from: the group, the seed, the clock and the city."""

    name: str
    index: int
    count: int
    interval_us: int
    seed: int
    start_us: int  # the run's device-time origin, µs since the Unix epoch (UTC)
    utc_offset_s: int  # local time = UTC + this (streetlight schedules, rush hours…)
    city_lat: float
    city_lon: float
    city_radius_km: float
    format: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Frames:
    """Frames of one window, in send order.

    ``devices`` index the model's devices; ``seqs`` are per-device counters (keys for the
    fault draws); ``times_us`` are the device times the frames carry (their storage key with
    the device); ``variants`` tell frames of one device and time apart where a format sends
    two (HJ 212 real-time and hourly data: the CN).
    """

    payloads: list[bytes]
    devices: I64
    seqs: I64
    times_us: I64
    variants: I64 | None = None

    def __len__(self) -> int:
        return len(self.payloads)


class DeviceModel(Protocol):
    """A family of simulated devices."""

    name: ClassVar[str]
    kind: ClassVar[str]  # topic kind level and registry kind
    formats: ClassVar[tuple[str, ...]]  # decoders it can speak; the first is the default
    table: ClassVar[str]  # where its frames' rows go (the accounting looks there)
    resolution_us: ClassVar[int]  # time resolution of its frames
    options: ClassVar[type[Options]]

    ctx: GroupContext

    @property
    def format(self) -> str:
        """The decoder its frames are for."""
        ...

    def external_ids(self) -> list[str]:
        """Every device's id as its protocol carries it, in device order."""
        ...

    def registry_rows(self) -> dict[str, list[Any]]:
        """Registry columns for the devices file (``district``, ``lat``, ``lon``, …)."""
        ...

    def frames(self, start_us: int, end_us: int) -> Frames:
        """Frames with device times in (start, end] µs after the run's start."""
        ...


def content_format(fmt: str) -> int | None:
    """The CoAP Content-Format a frame of this decoder is sent with."""
    return {"senml-json": 110, "senml-cbor": 112, "lwm2m-tlv": 11542, "tagread-json": 50}.get(
        fmt, 42
    )


def places(ctx: GroupContext) -> tuple[F64, F64]:
    """Each device's (lat, lon), spread evenly over the city's disc, from the seed."""
    n = np.arange(ctx.count)
    r = ctx.city_radius_km * np.sqrt(uniform(ctx.seed, stream_id(f"r:{ctx.name}"), n))
    a = 2 * np.pi * uniform(ctx.seed, stream_id(f"a:{ctx.name}"), n)
    lat = ctx.city_lat + r * np.cos(a) / 111.32
    lon = ctx.city_lon + r * np.sin(a) / (111.32 * math.cos(math.radians(ctx.city_lat)))
    return np.round(lat, 6), np.round(lon, 6)


def districts(ctx: GroupContext) -> list[str]:
    """Each device's district, from the seed."""
    u = uniform(ctx.seed, stream_id(f"district:{ctx.name}"), np.arange(ctx.count))
    return [DISTRICTS[i] for i in (u * len(DISTRICTS)).astype(np.int64).tolist()]


def local_hours(ctx: GroupContext, times_us: I64) -> F64:
    """Local time of day in hours for absolute µs times."""
    seconds = times_us // 1_000_000 + ctx.utc_offset_s
    return np.asarray((seconds % 86_400) / 3600.0, dtype=np.float64)


def id_block(ctx: GroupContext, digits: int) -> str:
    """Digits that make a group's ids distinct between groups and seeds."""
    return f"{ctx.index % 100:02d}{ctx.seed % 10 ** (digits - 2):0{digits - 2}d}"


def compact_frames(
    dtype: np.dtype[np.void], fields: dict[str, npt.ArrayLike], n: int
) -> list[bytes]:
    """Fixed-layout frames (cityflux's compact NB-IoT formats) built for many devices at once:
    fields into a structured array, CRC-16/CCITT-FALSE over each row but its last 2 bytes."""
    rec = np.zeros(n, dtype=dtype)
    for name, value in fields.items():
        rec[name] = value
    raw = rec.view(np.uint8).reshape(n, dtype.itemsize)
    rec["crc"] = crc16_ccitt_false(raw[:, :-2])
    blob = rec.tobytes()
    size = dtype.itemsize
    return [blob[i : i + size] for i in range(0, n * size, size)]
