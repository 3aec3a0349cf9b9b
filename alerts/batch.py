"""A committed batch as the rules see it: each table's rows sorted by (device, time) once,
and columns for expressions computed only when an expression asks for them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from core.frames import TableRows

Array = npt.NDArray[Any]
I64 = npt.NDArray[np.int64]


class LazyColumns(Mapping[str, Array]):
    """Columns by name, each computed on first use (``rows`` = their common length)."""

    def __init__(self, rows: int, makers: dict[str, Callable[[], Array]]) -> None:
        self.rows = rows
        self._makers = makers
        self._cache: dict[str, Array] = {}

    def __getitem__(self, name: str) -> Array:
        got = self._cache.get(name)
        if got is None:
            got = self._cache[name] = self._makers[name]()
        return got

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)

    def add(self, name: str, maker: Callable[[], Array]) -> None:
        """Offer one more column."""
        self._makers[name] = maker
        self._cache.pop(name, None)


class TableBatch:
    """One table's committed rows, sorted by (device_id, time)."""

    def __init__(self, rows: TableRows, received_us: I64 | None = None) -> None:
        self.rows = rows
        self.table = rows.table
        dev = np.asarray(rows.columns["device_id"], dtype=np.int64)
        t = np.asarray(rows.columns["time"], dtype=np.int64)
        self.order = np.lexsort((t, dev))
        self.device_id = dev[self.order]
        self.time = t[self.order]
        self.arrival = received_us[self.order] if received_us is not None else self.time
        """When each row's frame arrived (frame time when not known)."""
        self.n = int(self.order.shape[0])
        self._sorted: dict[str, Array] = {}
        self.full: LazyColumns | None = None
        """Every row's columns (for ``where`` expressions), made on first use."""
        self.selections: dict[str, I64] = {}
        """Rows selected by each ``where`` expression seen (rules share them)."""

    def column(self, name: str) -> Array:
        """A column in sorted order; numeric NULLs are NaN."""
        got = self._sorted.get(name)
        if got is None:
            if name == "device":
                got = self.rows.devices[self.order]
            else:
                col = self.rows.columns[name]
                null = self.rows.nulls.get(name)
                if null is not None and null.any() and col.dtype.kind in "iufb":
                    col = col.astype(np.float64)
                    col[null] = np.nan
                got = col[self.order]
            self._sorted[name] = got
        return got

    def has(self, name: str) -> bool:
        """Whether the table has this column."""
        return name == "device" or name in self.rows.columns
