"""Building ``vehicle_tag_reads`` columns from tag-read tuples (shared by llrp and tagread-json)."""

from __future__ import annotations

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


def _text(values: list[str | None]) -> tuple[npt.NDArray[np.bytes_], npt.NDArray[np.bool_]]:
    null = np.array([v is None for v in values], dtype=np.bool_)
    enc = [(v or "").encode() for v in values]
    return (np.array(enc, dtype=np.bytes_) if enc else np.empty(0, dtype="S1")), null


def build(reads: list[TagRead]) -> TableRows:
    """The reads as one ``vehicle_tag_reads`` batch."""
    antenna, antenna_null = nullable_column([r.antenna for r in reads], "i2")
    rssi, rssi_null = nullable_column([r.rssi for r in reads], "i2")
    last, last_null = nullable_column([r.last_seen_us for r in reads], "i8")
    count, count_null = nullable_column([r.seen_count for r in reads], "i4")
    tid, tid_null = _text([r.tid for r in reads])
    plate, plate_null = _text([r.plate for r in reads])
    epc, _ = _text([r.epc for r in reads])
    readers, _ = _text([r.reader for r in reads])
    return TableRows(
        table=VEHICLE_TAG_READS.name,
        columns={
            "time": np.array([r.first_seen_us for r in reads], dtype=np.int64),
            "epc": epc,
            "tid": tid,
            "plate": plate,
            "antenna": antenna,
            "rssi_dbm": rssi,
            "last_seen": last,
            "read_count": count,
        },
        devices=readers,
        frame_index=np.array([r.frame for r in reads], dtype=np.int32),
        nulls={
            "tid": tid_null,
            "plate": plate_null,
            "antenna": antenna_null,
            "rssi_dbm": rssi_null,
            "last_seen": last_null,
            "read_count": count_null,
        },
    )
