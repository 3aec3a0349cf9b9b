"""OSCORE (RFC 8613) security contexts for CoAP uplinks, one per device, keys from the registry.

aiocoap implements OSCORE's protection (COSE, AES-CCM, HKDF); this module only gives it a
context per device, built from the registry's ``oscore_kid``/``oscore_secret``/``oscore_salt``
when a device's first request names its kid, and dropped when the registry's change feed
reports the device changed.

Replay protection across restarts: a context starts with its replay window uninitialised, so
the first request after a (re)start is answered 4.01 with an Echo option and accepted when
the device repeats it with that Echo (RFC 8613 Appendix B.1.2; aiocoap clients do this on
their own). The server's own sequence numbers (used only when a response cannot reuse the
request's nonce) start at the number of milliseconds since 2024, so they are never reused
across restarts without being stored (Partial IV ≤ 5 bytes lasts until 2058).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from aiocoap import oscore

log = logging.getLogger(__name__)
_EPOCH_2024_MS = 1_704_067_200_000
NEGATIVE_TTL_S = 10.0  # an unknown kid is not looked up again for this long


class DeviceContext(oscore.CanProtect, oscore.CanUnprotect, oscore.SecurityContextUtils):  # type: ignore[misc]
    """The server's side of one device's OSCORE context."""

    def __init__(
        self, kid: bytes, secret: bytes, salt: bytes, device_id: int, external_id: str
    ) -> None:
        self.device_id = device_id
        self.external_id = external_id
        self.sender_id = b""
        self.recipient_id = kid
        self.id_context = None
        self.alg_aead = oscore.algorithms[oscore.DEFAULT_ALGORITHM]
        self.hashfun = oscore.hashfunctions[oscore.DEFAULT_HASHFUNCTION]
        self.derive_keys(salt, secret)
        self.recipient_replay_window = oscore.ReplayWindow(oscore.DEFAULT_WINDOWSIZE, _noop)
        self.echo_recovery = secrets.token_bytes(8)
        self.sender_sequence_number = int(time.time() * 1000) - _EPOCH_2024_MS

    def post_seqnoincrease(self) -> None:
        """Sequence numbers are time-based (module docstring): nothing to persist."""


def _noop() -> None:
    return None


_QUERY = (
    "SELECT id, external_id, oscore_secret, COALESCE(oscore_salt, ''::bytea) FROM devices "
    "WHERE oscore_kid = %s AND oscore_secret IS NOT NULL AND status = 'active'"
)


class LookupsExhaustedError(RuntimeError):
    """Registry look-ups of new key ids are over their rate: answer 5.03, try later."""


class DeviceKeyStore:
    """OSCORE contexts by kid, read from the registry on first use (bounded LRU).

    Hostile traffic (docs/design/0010-coap-limits.md): key ids no device has are remembered for
    ``NEGATIVE_TTL_S`` in an LRU of at most ``max_unknown`` entries, and registry look-ups of
    ids not in memory are limited to ``lookups_per_s`` (a token bucket of one second's worth);
    beyond it ``context`` raises ``LookupsExhaustedError`` without touching the database.
    """

    def __init__(
        self,
        conninfo: str,
        max_contexts: int = 100_000,
        max_unknown: int = 10_000,
        lookups_per_s: float = 200.0,
    ) -> None:
        self._conninfo = conninfo
        self._max = max_contexts
        self._max_unknown = max_unknown
        self._rate = lookups_per_s
        self._tokens = lookups_per_s
        self._refilled = time.monotonic()
        self.lookups = 0
        self._contexts: OrderedDict[bytes, DeviceContext] = OrderedDict()
        self._unknown: OrderedDict[bytes, float] = OrderedDict()
        self._loading: dict[bytes, asyncio.Future[DeviceContext | None]] = {}
        self._conn: psycopg.AsyncConnection[Any] | None = None

    def cached(self, kid: bytes) -> DeviceContext | None:
        """The context for ``kid`` if it is in memory."""
        ctx = self._contexts.get(kid)
        if ctx is not None:
            self._contexts.move_to_end(kid)
        return ctx

    async def context(self, kid: bytes) -> DeviceContext | None:
        """The context for ``kid`` (None: no active device has it). Raises
        ``psycopg.OperationalError`` when the registry cannot be read."""
        ctx = self.cached(kid)
        if ctx is not None:
            return ctx
        if time.monotonic() < self._unknown.get(kid, 0.0):
            return None
        pending = self._loading.get(kid)
        if pending is not None:
            return await asyncio.shield(pending)
        self._take_token()
        fut: asyncio.Future[DeviceContext | None] = asyncio.get_running_loop().create_future()
        self._loading[kid] = fut
        try:
            ctx = await self._load(kid)
            fut.set_result(ctx)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters get it re-raised
            raise
        finally:
            del self._loading[kid]
        return ctx

    def _take_token(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens < 1.0:
            raise LookupsExhaustedError(f"more than {self._rate:g} new OSCORE key ids per second")
        self._tokens -= 1.0

    @property
    def unknown_kids(self) -> int:
        """Key ids remembered as unknown (at most ``max_unknown``)."""
        return len(self._unknown)

    async def _load(self, kid: bytes) -> DeviceContext | None:
        self.lookups += 1
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            cur = await self._conn.execute(_QUERY, (kid,))
            row = await cur.fetchone()
        except psycopg.OperationalError:
            await self._conn.close()
            self._conn = None
            raise
        if row is None:
            self._unknown[kid] = time.monotonic() + NEGATIVE_TTL_S
            self._unknown.move_to_end(kid)
            while len(self._unknown) > self._max_unknown:
                self._unknown.popitem(last=False)
            return None
        device_id, external_id, secret, salt = row
        ctx = DeviceContext(kid, bytes(secret), bytes(salt), int(device_id), str(external_id))
        self._contexts[kid] = ctx
        if len(self._contexts) > self._max:
            self._contexts.popitem(last=False)  # its next request re-syncs with Echo
        return ctx

    def forget(self, device_ids: npt.NDArray[np.int64] | None) -> None:
        """The registry changed these devices (None: any may have): drop their contexts."""
        self._unknown.clear()
        if device_ids is None:
            self._contexts.clear()
            return
        changed = set(device_ids.tolist())
        for kid in [k for k, c in self._contexts.items() if c.device_id in changed]:
            del self._contexts[kid]

    async def close(self) -> None:
        """Close the registry connection."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
