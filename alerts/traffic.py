"""Traffic from vehicle tag reads: sections driven between gantries, and watch lists.

A tag read at gantry A and then at gantry B of the same road (``road`` and ``road_km`` of
both readers in the registry) has driven the section A→B: distance |km(B) − km(A)|, travel
time t(B) − t(A). :class:`SectionTracker` keeps each tag's last read (reader, time) across
batches and turns a batch of reads into the sections completed in it, with numpy: reads are
sorted by (tag, time) and each is paired with the tag's previous read. Section speed and
congestion rules read the same sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from alerts.attributes import DeviceAttributes
from alerts.machine import NEVER, SlotIndex
from device_registry.index import hash_ids

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bytes = npt.NDArray[np.bytes_]


def tag_keys(tags: Bytes) -> I64:
    """A 64-bit key per tag id (the registry's id hash)."""
    out: I64 = hash_ids(tags).view(np.int64)
    return out


@dataclass(slots=True)
class Sections:
    """Sections completed in a batch; ``row`` points at the read at B (sorted-rows order)."""

    row: I64
    tag: I64
    from_id: I64
    to_id: I64
    time: I64
    travel_s: F64
    distance_km: F64
    road: Bytes

    def __len__(self) -> int:
        return int(self.row.shape[0])

    def take(self, keep: npt.NDArray[np.bool_]) -> Sections:
        """The sections selected by a mask."""
        return Sections(
            self.row[keep],
            self.tag[keep],
            self.from_id[keep],
            self.to_id[keep],
            self.time[keep],
            self.travel_s[keep],
            self.distance_km[keep],
            self.road[keep],
        )


class SectionTracker:
    """Each tag's last read across batches; a batch of reads → the sections completed."""

    def __init__(self) -> None:
        self.index = SlotIndex()
        self.reader = np.empty(0, dtype=np.int64)
        self.time = np.empty(0, dtype=np.int64)

    def _grow(self) -> None:
        need = self.index.size
        if need > self.reader.shape[0]:
            cap = max(need, 2 * self.reader.shape[0], 1024)
            for name, fill in (("reader", -1), ("time", NEVER)):
                old = getattr(self, name)
                new = np.full(cap, fill, dtype=np.int64)
                new[: old.shape[0]] = old
                setattr(self, name, new)

    def sections(self, tags: Bytes, readers: I64, t: I64, attrs: DeviceAttributes) -> Sections:
        """The sections the reads complete (reads in any order), updating each tag's last
        read. Reads older than a tag's last read are ignored."""
        n = tags.shape[0]
        keys = tag_keys(tags)
        order = np.lexsort((t, keys))
        k, r, tt = keys[order], readers[order], t[order]
        first = np.ones(n, dtype=np.bool_)
        first[1:] = k[1:] != k[:-1]
        uniq = k[first]
        slots = self.index.slots_for(uniq)
        self._grow()
        group = np.cumsum(first) - 1
        prev_reader = np.empty(n, dtype=np.int64)
        prev_time = np.empty(n, dtype=np.int64)
        prev_reader[1:], prev_time[1:] = r[:-1], tt[:-1]
        carry = slots[group[first]]
        prev_reader[first], prev_time[first] = self.reader[carry], self.time[carry]
        late = tt < prev_time
        is_section = (prev_reader >= 0) & (prev_reader != r) & (tt > prev_time) & ~late
        last = np.ones(n, dtype=np.bool_)
        last[:-1] = k[1:] != k[:-1]
        upd = slots[group[last]]
        newer = tt[last] >= self.time[upd]
        self.reader[upd[newer]] = r[last][newer]
        self.time[upd[newer]] = tt[last][newer]
        i = np.flatnonzero(is_section)
        a, b = prev_reader[i], r[i]
        road_a, road_b = attrs.texts("road", a), attrs.texts("road", b)
        km = np.abs(attrs.number("road_km", b) - attrs.number("road_km", a))
        same = (road_a == road_b) & (road_b != b"") & ~np.isnan(km)
        i, a, b, km, road = i[same], a[same], b[same], km[same], road_b[same]
        return Sections(
            row=order[i],
            tag=k[i],
            from_id=a,
            to_id=b,
            time=tt[i],
            travel_s=(tt[i] - prev_time[i]).astype(np.float64) / 1e6,
            distance_km=km,
            road=road,
        )


class Watchlist:
    """Identifiers (tag EPC/TID, plate, VIN, phone) from a file, reloaded when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mtime = -1.0
        self.ids = np.empty(0, dtype="S1")
        self.reload()

    def reload(self) -> bool:
        """Read the file again if it changed; return whether it did."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return False
        if mtime == self.mtime:
            return False
        entries = set()
        for line in self.path.read_text(encoding="utf-8").splitlines():
            text = line.split("#", 1)[0].strip()
            if text:
                entries.add(text.encode())
                entries.add(text.upper().encode())
        self.ids = np.array(sorted(entries), dtype=np.bytes_) if entries else self.ids[:0]
        self.mtime = mtime
        return True

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def contains(self, values: Bytes) -> npt.NDArray[np.bool_]:
        """Whether each value is listed."""
        if self.ids.shape[0] == 0 or values.shape[0] == 0:
            return np.zeros(values.shape[0], dtype=np.bool_)
        at = np.minimum(np.searchsorted(self.ids, values), self.ids.shape[0] - 1)
        found: npt.NDArray[np.bool_] = (self.ids[at] == values) & (values != b"")
        return found
