"""What both MQTT listeners share: their lifecycle, and acknowledgements released in arrival
order, never across reconnects.

A QoS 1 frame is acknowledged (PUBACK) only after its batch committed. Two rules shape how:

- **Order.** MQTT requires PUBACKs in the order the PUBLISHes arrived ([MQTT-4.6.0-2]);
  Mosquitto and EMQX's in-memory sessions accept any order, but EMQX's durable sessions drop
  an out-of-order PUBACK and stall the stream (docs/design/0008-puback-order.md). Batches per
  format commit on several writers in any order, so PUBACKs are held until every frame
  received before them is committed too, then sent as one run.
- **Connections.** Packet ids are per connection: after a reconnect the broker redelivers
  the old frame under an id of its choosing and may reuse the old id for another frame, so a
  late PUBACK by packet id alone could acknowledge a frame not yet stored. A handle carries
  the connection's generation (15 bits, wrapping: a handle 32,768 reconnects old is never
  still waiting) and the frame's arrival number on that connection (48 bits: 2.8·10¹⁴
  frames, years at a million a second) as ``generation << 48 | arrival``;
  only handles of the current connection are ever acknowledged (the redelivered copy is
  stored once by the idempotent writer and acknowledged under its new id).

Costs are per batch, not per frame (numpy over the batch's handles), except one list append
per frame at receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import numpy as np

SHIFT = 48
ARRIVAL_MASK = (1 << SHIFT) - 1
GENERATIONS = 1 << 15  # handles stay non-negative int64
NO_ACK = -1
_COMPACT = 1 << 20  # forget acknowledged arrivals in steps of this many


class AckHandles:
    """Per-connection arrival order of QoS 1 packet ids, and what may be acknowledged."""

    def __init__(self) -> None:
        self.generation = 0
        self.packet_ids: list[int] = []
        """Packet id of each QoS 1 arrival on this connection (from ``base``); listeners
        append to it directly on their hot path (``handle`` does the same)."""
        self._base = 0  # arrival number of packet_ids[0]
        self._done = np.zeros(0, dtype=np.int8)  # 0 waiting, 1 acknowledge, 2 abandoned
        self._head = 0  # arrivals before this (from base) are released

    def new_connection(self) -> None:
        """A new connection: nothing of earlier ones will be acknowledged."""
        self.generation += 1
        self.packet_ids = []
        self._base = self._head = 0
        self._done = np.zeros(0, dtype=np.int8)

    @property
    def tag(self) -> int:
        """The current connection's bits of a handle."""
        return (self.generation % GENERATIONS) << SHIFT

    def handle(self, packet_id: int | None) -> int:
        """Note a frame's arrival; its handle (``NO_ACK`` for QoS 0: nothing to acknowledge).
        The hot path inlines this: ``tag | (base + len(packet_ids))``, then the append."""
        if packet_id is None:
            return NO_ACK
        h = self.tag | (self._base + len(self.packet_ids))
        self.packet_ids.append(packet_id)
        return h

    @property
    def base(self) -> int:
        """Arrival number of the first packet id still kept."""
        return self._base

    def release(self, handles: Sequence[int], ok: bool = True) -> list[int]:
        """Mark these frames committed (``ok``) or abandoned; the packet ids that may be
        acknowledged now, in arrival order: those of the longest run of settled frames from
        the oldest one waiting (abandoned frames are skipped, never acknowledged)."""
        h = np.asarray(handles, dtype=np.int64)
        mine = h[(h >= 0) & (h >> SHIFT == self.generation % GENERATIONS)] & ARRIVAL_MASK
        n = len(self.packet_ids)
        if self._done.shape[0] < n:
            grown = np.zeros(max(n, 2 * self._done.shape[0]), dtype=np.int8)
            grown[: self._done.shape[0]] = self._done
            self._done = grown
        if mine.shape[0]:
            self._done[mine - self._base] = 1 if ok else 2
        waiting = np.flatnonzero(self._done[self._head : n] == 0)
        end = self._head + (int(waiting[0]) if waiting.shape[0] else n - self._head)
        if end == self._head:
            return []
        run = self._done[self._head : end]
        ids = self.packet_ids[self._head : end]
        if not (run == 1).all():  # skip abandoned frames
            ids = [p for p, d in zip(ids, run.tolist(), strict=True) if d == 1]
        self._head = end
        if self._head >= _COMPACT:
            del self.packet_ids[: self._head]
            self._done = self._done[self._head :].copy()
            self._base += self._head
            self._head = 0
        return ids


def puback_packets(packet_ids: Sequence[int]) -> bytes:
    """MQTT PUBACK packets (reason code omitted: success) for these ids, in one buffer."""
    ids = np.asarray(packet_ids, dtype=np.uint16)
    out = np.empty((ids.shape[0], 4), dtype=np.uint8)
    out[:, 0], out[:, 1] = 0x40, 0x02
    out[:, 2], out[:, 3] = ids >> 8, ids & 0xFF
    return out.tobytes()


class MqttSource:
    """The lifecycle both listeners share: connected/stopping events, ack handles, pausing
    state, and the waits. Subclasses do the protocol (paho, or the mqtt5 codec)."""

    def __init__(self) -> None:
        self._acks = AckHandles()
        self._paused = False
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        """True while connected and subscribed."""
        return self._connected.is_set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or less if the listener is stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def wait_connected(self, within_s: float) -> None:
        """Until connected and subscribed (raises TimeoutError after ``within_s``)."""
        await asyncio.wait_for(self._connected.wait(), within_s)

    def pause(self) -> None:
        """Stop reading new frames (the broker keeps them)."""
        raise NotImplementedError

    def stop_reading(self) -> None:
        """First step of a graceful stop: take no new frames (the broker keeps them)."""
        self.pause()
