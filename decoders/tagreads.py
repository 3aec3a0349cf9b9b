"""Building ``vehicle_tag_reads`` columns from tag-read tuples (shared by llrp and tagread-json)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from core.frames import TableRows
from decoders.rows import nullable_column
from decoders.tables import VEHICLE_TAG_READS


class TagRead(NamedTuple):
    """One tag seen by one reader (None = not reported)."""

    first_seen_us: int
    reader: str
    epc: str
    tid: str | None
    plate: str | None
    antenna: int | None
    rssi: int | None
    last_seen_us: int | None
    seen_count: int | None
    frame: int


def _text(values: Sequence[str | None]) -> tuple[npt.NDArray[np.bytes_], npt.NDArray[np.bool_]]:
    n = len(values)
    if not n:
        return np.empty(0, dtype="S1"), np.zeros(0, dtype=np.bool_)
    nones = values.count(None)
    if nones == n:  # a field nobody sent
        return np.zeros(n, dtype="S1"), np.ones(n, dtype=np.bool_)
    if not nones:
        try:  # ASCII (the usual EPC, TID, reader): numpy encodes it in one call
            return np.array(values, dtype=np.bytes_), np.zeros(n, dtype=np.bool_)
        except UnicodeEncodeError:
            pass
    null = np.array([v is None for v in values], dtype=np.bool_)
    enc = [(v or "").encode() for v in values]
    return np.array(enc, dtype=np.bytes_), null


def build(reads: list[TagRead]) -> TableRows:
    """The reads as one ``vehicle_tag_reads`` batch."""
    if reads:
        first, readers, epcs, tids, plates, antennas, rssis, lasts, counts, frames = zip(
            *reads, strict=True
        )
    else:
        first = readers = epcs = tids = plates = antennas = rssis = lasts = counts = frames = ()
    antenna, antenna_null = nullable_column(antennas, "i2")
    rssi, rssi_null = nullable_column(rssis, "i2")
    last, last_null = nullable_column(lasts, "i8")
    count, count_null = nullable_column(counts, "i4")
    tid, tid_null = _text(tids)
    plate, plate_null = _text(plates)
    epc, _ = _text(epcs)
    devices, _ = _text(readers)
    return TableRows(
        table=VEHICLE_TAG_READS.name,
        columns={
            "time": np.array(first, dtype=np.int64),
            "epc": epc,
            "tid": tid,
            "plate": plate,
            "antenna": antenna,
            "rssi_dbm": rssi,
            "last_seen": last,
            "read_count": count,
        },
        devices=devices,
        frame_index=np.array(frames, dtype=np.int32),
        nulls={
            "tid": tid_null,
            "plate": plate_null,
            "antenna": antenna_null,
            "rssi_dbm": rssi_null,
            "last_seen": last_null,
            "read_count": count_null,
        },
    )
