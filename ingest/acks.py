"""MQTT acknowledgement handles that stay right across reconnects, for both listeners.

A QoS 1 frame is acknowledged (PUBACK) only after its batch committed, which can be after the
connection it came on was lost and a new one made. Packet ids are per connection: the broker
redelivers the old frame under a packet id of its choosing and may reuse the old id for
another frame, so a late PUBACK by packet id alone could acknowledge a frame that is not yet
stored. A handle therefore carries the connection's generation: ``generation << 16 | packet
id``, and only handles of the current connection are ever acknowledged (the redelivered copy
is stored once by the idempotent writer and acknowledged under its new id).
"""

from __future__ import annotations

from collections.abc import Sequence

SHIFT = 16
PACKET_ID_MASK = (1 << SHIFT) - 1
NO_ACK = -1


class AckHandles:
    """Connection generations and the handles made from them."""

    def __init__(self) -> None:
        self.generation = 0

    def new_connection(self) -> None:
        """A new connection: handles of earlier ones will not be acknowledged."""
        self.generation += 1

    @property
    def base(self) -> int:
        """OR a packet id into this for its handle (hot paths inline it)."""
        return self.generation << SHIFT

    def handle(self, packet_id: int | None) -> int:
        """The handle of a frame received with ``packet_id`` (None: QoS 0, nothing to ack)."""
        return NO_ACK if packet_id is None else self.base | packet_id

    def current(self, handles: Sequence[int]) -> list[int]:
        """Packet ids to acknowledge now: the handles made on the current connection."""
        gen = self.generation
        return [h & PACKET_ID_MASK for h in handles if h >= 0 and h >> SHIFT == gen]
