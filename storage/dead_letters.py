"""Dead letters: frames that could not be stored, kept whole with where they came from and why."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from decoders.base import Column, ColumnType
from ingest.batch import FrameBatch

T = ColumnType
COLUMNS = (
    Column("received_at", T.TIMESTAMPTZ),
    Column("transport", T.TEXT),
    Column("source", T.TEXT),
    Column("decoder", T.TEXT),
    Column("device", T.TEXT, nullable=True),
    Column("reason", T.TEXT),
    Column("payload", T.BYTEA),
)


@dataclass(slots=True)
class DeadLetters:
    """Rejected frames of one batch, by frame index, with their reasons."""

    frames: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def add(self, frame: int, reason: str) -> None:
        """Reject one frame."""
        self.frames.append(frame)
        self.reasons.append(reason)

    def __len__(self) -> int:
        return len(self.frames)

    def columns(self, batch: FrameBatch) -> dict[str, np.ndarray]:
        """Columns for the ``dead_letters`` table (binary COPY or INSERT)."""
        idx = self.frames
        hints = [batch.device_hints[i] for i in idx]
        return {
            "received_at": np.array([batch.received_us[i] for i in idx], dtype=np.int64),
            "transport": np.array([batch.transport.encode()] * len(idx), dtype=np.bytes_),
            "source": np.array([batch.sources[i].encode() for i in idx], dtype=np.bytes_),
            "decoder": np.array([batch.decoder.encode()] * len(idx), dtype=np.bytes_),
            "device": np.array([h.encode() for h in hints], dtype=np.bytes_),
            "reason": np.array([r.encode() for r in self.reasons], dtype=np.bytes_),
            "payload": np.array([batch.payloads[i] for i in idx] + [b""], dtype=object)[:-1],
        }

    def nulls(self, batch: FrameBatch) -> dict[str, np.ndarray]:
        """NULL masks: the device is NULL when the transport named none."""
        return {
            "device": np.array([batch.device_hints[i] == "" for i in self.frames], dtype=np.bool_)
        }
