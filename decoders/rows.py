"""Column builders for variable-layout decoders: append scalars per reading, get numpy columns."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from core.frames import TableRows
from decoders.tables import ENV_READINGS


def nullable_column(
    values: Sequence[object], dtype: str
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.bool_]]:
    """A column from values where None means NULL: the values (0 in NULL slots) and the mask.
    A column with no NULL, or only NULLs, is built without a pass per value."""
    n, nones = len(values), values.count(None)
    if not nones:
        return np.array(values, dtype=dtype), np.zeros(n, dtype=np.bool_)
    if nones == n:  # a field nobody sent
        return np.zeros(n, dtype=dtype), np.ones(n, dtype=np.bool_)
    null = np.array([v is None for v in values], dtype=np.bool_)
    return np.array([0 if v is None else v for v in values], dtype=dtype), null


class EnvReadingsBuilder:
    """Accumulates env_readings rows as parallel lists and turns them into one ``TableRows``."""

    __slots__ = ("_devices", "_frames", "_metrics", "_times", "_values")

    def __init__(self) -> None:
        self._times: list[int] = []
        self._devices: list[bytes] = []
        self._metrics: list[bytes] = []
        self._values: list[float] = []
        self._frames: list[int] = []

    def add(self, time_us: int, device: bytes, metric: bytes, value: float, frame: int) -> None:
        """Add one reading."""
        self._times.append(time_us)
        self._devices.append(device)
        self._metrics.append(metric)
        self._values.append(value)
        self._frames.append(frame)

    def mark(self) -> int:
        """A position to roll back to if the frame being parsed turns out to be bad."""
        return len(self._times)

    def rollback(self, mark: int) -> None:
        """Drop the readings added since ``mark``."""
        for lst in (self._times, self._devices, self._metrics, self._values, self._frames):
            del lst[mark:]

    def build(self) -> TableRows:
        """The accumulated readings as numpy columns."""
        return TableRows(
            table=ENV_READINGS.name,
            columns={
                "time": np.array(self._times, dtype=np.int64),
                "metric": np.array(self._metrics, dtype=np.bytes_)
                if self._metrics
                else np.empty(0, dtype="S1"),
                "value": np.array(self._values, dtype=np.float64),
            },
            devices=np.array(self._devices, dtype=np.bytes_)
            if self._devices
            else np.empty(0, dtype="S1"),
            frame_index=np.array(self._frames, dtype=np.int32),
        )
