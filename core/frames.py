"""The one shape data has between stages: raw frames with their ack handles, and typed rows.

A frame travels: listener -> ``FrameBatch`` -> decoder -> ``Decoded`` (``TableRows`` per table and
``Reject``s) -> registry (fills ``device_id``) -> writer (one transaction) -> ``AckSink.release``.
See docs/design/0001-batch-and-ack-after-commit.md.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]
BytesArray = npt.NDArray[np.bytes_]


@dataclass(slots=True)
class Outcome:
    """What became of a committed batch's frames, by frame index: the dead-lettered ones
    with their reasons, and the replies their protocol asks for (e.g. HJ 212 9014)."""

    rejected: dict[int, str] = field(default_factory=dict)
    replies: dict[int, bytes] = field(default_factory=dict)


class AckSink(Protocol):
    """Releases the transport-level acknowledgements of frames once their batch is durable.

    Contract: ``release`` is called exactly once per batch, from the event-loop thread, after
    the transaction holding every row (and dead letter) of the batch has committed, with
    ``ok=True`` and the frames' ``outcome``; or with ``ok=False`` when the service stops
    before the batch could be stored, in which case the transport must not acknowledge (the
    device or broker will redeliver). A dead-lettered frame is acknowledged too (it is
    stored, as a dead letter); transports that answer per frame (CoAP) tell the device why.
    """

    def release(self, ack_ids: Sequence[int], ok: bool, outcome: Outcome | None = None) -> None:
        """Acknowledge (ok) or abandon (not ok) the frames with these transport ids."""
        ...

    def send_replies(self, replies: Sequence[tuple[str, bytes]]) -> None:
        """Send protocol replies (source the frame came from, payload) back to devices,
        after the batch committed (e.g. HJ 212 9014 data responses)."""
        ...


class NoAck:
    """Ack sink for transports without acknowledgements (MQTT QoS 0, CoAP NON, replays)."""

    def release(self, ack_ids: Sequence[int], ok: bool, outcome: Outcome | None = None) -> None:
        """Nothing to acknowledge."""

    def send_replies(self, replies: Sequence[tuple[str, bytes]]) -> None:
        """Nowhere to send replies."""


@dataclass(slots=True)
class FrameBatch:
    """Raw frames for one decoder, in arrival order, with what the transport knew of each."""

    decoder: str
    transport: str
    payloads: list[bytes] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    """Topic (MQTT) or path (CoAP) each frame arrived on."""
    device_hints: list[str] = field(default_factory=list)
    """Device id named by the transport (topic level, CoAP path), '' when none."""
    kind_hints: list[str] = field(default_factory=list)
    """Device kind named by the transport (used when auto-provisioning), '' when none."""
    received_us: list[int] = field(default_factory=list)
    """Receive time, µs since the Unix epoch (UTC)."""
    ack_ids: list[int] = field(default_factory=list)
    """Transport ack handle per frame (MQTT packet id for QoS 1), -1 when nothing to ack."""
    ack_sink: AckSink = field(default_factory=NoAck)
    redelivered: list[int] = field(default_factory=list)
    """Frames the transport says were delivered before (MQTT DUP): first suspects when a
    stage fails for the batch."""
    refused: dict[int, str] = field(default_factory=dict)
    """Frames refused at the edge (bad topic, oversize…), with the dead letter's reason;
    they are never decoded."""

    def __len__(self) -> int:
        return len(self.payloads)

    def subset(self, frames: Sequence[int]) -> FrameBatch:
        """The frames at these positions (in this order), as a batch of their own."""
        where = {f: i for i, f in enumerate(frames)}
        return FrameBatch(
            self.decoder,
            self.transport,
            [self.payloads[f] for f in frames],
            [self.sources[f] for f in frames],
            [self.device_hints[f] for f in frames],
            [self.kind_hints[f] for f in frames],
            [self.received_us[f] for f in frames],
            [self.ack_ids[f] for f in frames],
            self.ack_sink,
            [where[f] for f in self.redelivered if f in where],
            {where[f]: r for f, r in self.refused.items() if f in where},
        )

    def append(
        self,
        payload: bytes,
        source: str,
        device_hint: str,
        kind_hint: str,
        received_us: int,
        ack_id: int = -1,
    ) -> None:
        """Add one frame."""
        self.payloads.append(payload)
        self.sources.append(source)
        self.device_hints.append(device_hint)
        self.kind_hints.append(kind_hint)
        self.received_us.append(received_us)
        self.ack_ids.append(ack_id)


@dataclass(slots=True)
class TableRows:
    """Typed numpy columns for one target table, as produced by a decoder.

    ``devices`` carries each row's external device id (bytes); the registry turns it into the
    ``device_id`` column. ``frame_index`` points every row back at its frame in the batch.
    ``nulls`` holds a boolean mask (True = NULL) for nullable columns that have NULLs.
    """

    table: str
    columns: dict[str, npt.NDArray[np.generic]]
    devices: BytesArray
    frame_index: Int32Array
    nulls: dict[str, BoolArray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frame_index.shape[0])

    def take(self, keep: BoolArray | Int64Array) -> TableRows:
        """The subset of rows selected by a boolean mask or an index array."""
        return TableRows(
            table=self.table,
            columns={k: v[keep] for k, v in self.columns.items()},
            devices=self.devices[keep],
            frame_index=self.frame_index[keep],
            nulls={k: v[keep] for k, v in self.nulls.items()},
        )


@dataclass(slots=True, frozen=True)
class Reject:
    """A frame that cannot be stored, with a precise, stable reason (goes to dead letters)."""

    index: int
    reason: str


@dataclass(slots=True)
class FrameNumbers:
    """The numbers a device gives its frames, one entry per frame, for loss detection
    (docs/design/0011-frame-loss.md): a counter (``modulus`` 65536 for a u16 that wraps)
    or a slot in a regular stream (``modulus`` 0: HJ 212's minute or hour of data).
    A ``stream`` is one numbering per device (``compact``, ``jt808``, ``hj212-2051``…)."""

    stream: str
    modulus: int
    devices: BytesArray
    """External device id of each frame, as in ``TableRows.devices``."""
    frame_index: Int32Array
    numbers: Int64Array

    def __len__(self) -> int:
        return int(self.frame_index.shape[0])

    def take(self, keep: BoolArray) -> FrameNumbers:
        """The entries selected by a boolean mask."""
        return FrameNumbers(
            self.stream,
            self.modulus,
            self.devices[keep],
            self.frame_index[keep],
            self.numbers[keep],
        )


@dataclass(slots=True)
class Decoded:
    """What a decoder made of a batch: rows per table, and the frames it rejected."""

    rows: dict[str, TableRows] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    frames_ok: int = 0
    """Frames decoded without reject (a frame may yield zero rows, e.g. a heartbeat)."""
    replies: list[tuple[int, bytes]] = field(default_factory=list)
    """(frame index, payload) the protocol says to send back to the device after commit."""
    numbers: list[FrameNumbers] = field(default_factory=list)
    """Frame numbers per stream, for formats that number their frames (loss detection)."""

    def without(self, frames: Collection[int]) -> Decoded:
        """The same, less every row, reject and reply of these frames (decoded along with
        their batch, but decided about before: refused at the edge)."""
        drop = np.fromiter(frames, dtype=np.int32, count=len(frames))
        rejected = {r.index for r in self.rejects}
        return Decoded(
            rows={t: r.take(~np.isin(r.frame_index, drop)) for t, r in self.rows.items()},
            rejects=[r for r in self.rejects if r.index not in frames],
            frames_ok=self.frames_ok - sum(1 for f in frames if f not in rejected),
            replies=[(i, p) for i, p in self.replies if i not in frames],
            numbers=[n.take(~np.isin(n.frame_index, drop)) for n in self.numbers],
        )


def merge_decoded(parts: Sequence[tuple[Sequence[int], Decoded]]) -> Decoded:
    """One ``Decoded`` for a batch from its parts' (each decoded from ``batch.subset(frames)``):
    rows, rejects and replies point at the whole batch's frames again."""
    out = Decoded()
    tables: dict[str, list[TableRows]] = {}
    numbers: dict[str, list[FrameNumbers]] = {}
    for frames, dec in parts:
        where = np.asarray(frames, dtype=np.int32)
        for num in dec.numbers:
            if len(num):
                numbers.setdefault(num.stream, []).append(
                    FrameNumbers(
                        num.stream, num.modulus, num.devices, where[num.frame_index], num.numbers
                    )
                )
        out.frames_ok += dec.frames_ok
        out.rejects += [Reject(int(where[r.index]), r.reason) for r in dec.rejects]
        out.replies += [(int(where[i]), p) for i, p in dec.replies]
        for name, rows in dec.rows.items():
            if len(rows):
                mapped = TableRows(
                    rows.table, rows.columns, rows.devices, where[rows.frame_index], rows.nulls
                )
                tables.setdefault(name, []).append(mapped)
    for stream, nums in numbers.items():
        out.numbers.append(
            FrameNumbers(
                stream,
                nums[0].modulus,
                np.concatenate([n.devices for n in nums]),
                np.concatenate([n.frame_index for n in nums]),
                np.concatenate([n.numbers for n in nums]),
            )
        )
    for name, chunks in tables.items():
        first = chunks[0]
        nullable = {k for c in chunks for k in c.nulls}
        out.rows[name] = TableRows(
            first.table,
            {k: np.concatenate([c.columns[k] for c in chunks]) for k in first.columns},
            np.concatenate([c.devices for c in chunks]),
            np.concatenate([c.frame_index for c in chunks]),
            {
                k: np.concatenate([c.nulls.get(k, np.zeros(len(c), np.bool_)) for c in chunks])
                for k in nullable
            },
        )
    return out
