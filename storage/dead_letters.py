"""Dead letters: frames that could not be stored, kept whole with where they came from and why."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from core.frames import FrameBatch
from decoders.base import Column, ColumnType

T = ColumnType
COLUMNS = (
    Column("received_at", T.TIMESTAMPTZ),
    Column("transport", T.TEXT),
    Column("source", T.TEXT),
    Column("decoder", T.TEXT),
    Column("device", T.TEXT, nullable=True),
    Column("reason", T.TEXT),
    Column("payload", T.BYTEA),
    Column("digest", T.BYTEA),
)
REDELIVERY_WINDOW = "2 days"  # a redelivered frame's earlier dead letter is looked for this far


def frame_digest(transport: str, source: str, payload: bytes) -> bytes:
    """What identifies a frame across deliveries (BLAKE2b-128)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(transport.encode())
    h.update(b"\0")
    h.update(source.encode("utf-8", errors="surrogatepass"))
    h.update(b"\0")
    h.update(payload)
    return h.digest()


def pg_text(text: str) -> bytes:
    """Text PostgreSQL accepts whatever a device sent: invalid UTF-8 (lone surrogates) and
    NUL characters escaped with backslashes."""
    return text.encode("utf-8", errors="backslashreplace").replace(b"\0", b"\\x00")


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
        objects = np.empty(len(idx), dtype=object)  # bytea columns: one bytes object per row
        payloads, digests = objects.copy(), objects.copy()
        payloads[:] = [batch.payloads[i] for i in idx]
        digests[:] = [
            frame_digest(batch.transport, batch.sources[i], batch.payloads[i]) for i in idx
        ]
        return {
            "received_at": np.array([batch.received_us[i] for i in idx], dtype=np.int64),
            "transport": np.array([pg_text(batch.transport)] * len(idx), dtype=np.bytes_),
            "source": np.array([pg_text(batch.sources[i]) for i in idx], dtype=np.bytes_),
            "decoder": np.array([pg_text(batch.decoder)] * len(idx), dtype=np.bytes_),
            "device": np.array([pg_text(h) for h in hints], dtype=np.bytes_),
            "reason": np.array([pg_text(r) for r in self.reasons], dtype=np.bytes_),
            "payload": payloads,
            "digest": digests,
        }

    def redelivered(self, batch: FrameBatch) -> np.ndarray:
        """Which dead letters are of frames delivered before (stored only if not yet)."""
        again = set(batch.redelivered)
        return np.array([i in again for i in self.frames], dtype=np.bool_)

    def nulls(self, batch: FrameBatch) -> dict[str, np.ndarray]:
        """NULL masks: the device is NULL when the transport named none."""
        return {
            "device": np.array([batch.device_hints[i] == "" for i in self.frames], dtype=np.bool_)
        }
