"""Ties decoded rows to registered devices, following each profile's unknown-device policy.

The whole registry is read once with ``COPY … TO STDOUT`` and parsed with numpy (10M devices
in seconds, no Python object per device), then followed incrementally: a statement trigger
NOTIFYs ``cityflux_devices`` when devices are added or change identity, status or profile,
and ``follow`` reads the rows whose ``updated_at`` passed the watermark (and polls on a
timer, so a lost notification only delays a change).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import numpy as np
import numpy.typing as npt
import psycopg

from device_registry.ids import invalid_ids
from device_registry.index import DISABLED, UNKNOWN, DeviceIndex

log = logging.getLogger(__name__)

WATERMARK_OVERLAP = timedelta(seconds=30)  # when other sessions' transactions are not visible
FULL_RELOAD_ROWS = 200_000  # more changed rows than this: reload everything with COPY
# A row's updated_at is its transaction's start time, so a transaction still running when we
# read can commit rows older than what we have seen. The next read therefore starts at the
# start of the oldest transaction in progress (or our read time if there is none), not at the
# newest row seen: nothing is missed, and a finished bulk import is not read again.
_HORIZON = """
SELECT LEAST(clock_timestamp(), (
           SELECT min(xact_start) FROM pg_stat_activity
           WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
             AND state NOT IN ('idle') AND datname = current_database()
       )),
       EXISTS (SELECT 1 FROM pg_stat_activity
               WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
                 AND state IS NULL AND datname = current_database())
"""
PARSE_CHUNK = 8 << 20  # bytes of COPY text parsed at a time (bounds the parse's temporaries)


class UnknownDevicePolicy(StrEnum):
    """What to do with a frame from a device the registry does not know."""

    REJECT = "reject"
    AUTO_PROVISION = "auto-provision"


@dataclass(slots=True)
class Resolution:
    """Internal ids per row (valid where ``ok``), and how many devices were provisioned."""

    ids: npt.NDArray[np.int32]
    ok: npt.NDArray[np.bool_]
    unknown: npt.NDArray[np.bool_]
    disabled: npt.NDArray[np.bool_]
    provisioned: int = 0
    invalid: npt.NDArray[np.bool_] | None = None
    """Ids that break the registry's rule (device_registry/ids.py): never provisioned."""


@dataclass(slots=True)
class ProfileMatch:
    """The profile frames of an unknown device fall under, by (kind, decoder)."""

    name: str
    policy: UnknownDevicePolicy


@dataclass(slots=True)
class RegistryParts:
    """Parsed ``external_id, id, active`` rows."""

    keys: npt.NDArray[np.bytes_]
    ids: npt.NDArray[np.int32]
    active: npt.NDArray[np.bool_]


def parse_copy_text(data: bytes) -> RegistryParts:
    """Rows of ``COPY (SELECT external_id, id, status = 'active' …) TO STDOUT`` (text format).

    Vectorised: newline and tab positions give every field; ids are parsed as digits. Lines
    with backslash escapes (ids holding tabs or backslashes) are decoded one by one.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    n = ends.shape[0]
    if n == 0:
        return RegistryParts(np.empty(0, "S1"), np.empty(0, np.int32), np.empty(0, bool))
    starts = np.concatenate([[0], ends[:-1] + 1])
    tab_at = np.flatnonzero(buf == ord("\t"))
    if tab_at.shape[0] != 2 * n or b"\\" in data:
        return _parse_slowly(data)
    tabs = tab_at.reshape(n, 2)
    key_len = tabs[:, 0] - starts
    width = int(key_len.max())
    cols = np.arange(width)
    mat = buf[np.minimum(starts[:, None] + cols, buf.shape[0] - 1)]
    mat[cols >= key_len[:, None]] = 0
    keys = np.ascontiguousarray(mat).view(f"S{width}").ravel()
    id_len = tabs[:, 1] - tabs[:, 0] - 1
    digits = int(id_len.max())
    ids = np.zeros(n, dtype=np.int64)
    for j in range(digits):
        present = id_len > j
        d = buf[np.minimum(tabs[:, 0] + 1 + j, buf.shape[0] - 1)].astype(np.int64) - ord("0")
        ids = np.where(present, ids * 10 + d, ids)
    active = buf[tabs[:, 1] + 1] == ord("t")
    return RegistryParts(keys, ids.astype(np.int32), active)


INDEX_COPY = "COPY (SELECT external_id, id, status = 'active' FROM devices) TO STDOUT"


class IndexBuilder:
    """Feed it the blocks of ``INDEX_COPY`` as they arrive; ``index()`` parses the rest and
    builds the ``DeviceIndex`` (parsing 8 MB at a time bounds the temporaries)."""

    def __init__(self) -> None:
        self._parts: list[RegistryParts] = []
        self._pending = bytearray()

    def feed(self, block: bytes | bytearray | memoryview) -> None:
        """Add one block of COPY text."""
        self._pending += block
        if len(self._pending) >= PARSE_CHUNK:
            cut = self._pending.rfind(b"\n") + 1
            self._parts.append(parse_copy_text(bytes(self._pending[:cut])))
            del self._pending[:cut]

    def index(self) -> DeviceIndex:
        """The index of everything fed."""
        parts = [*self._parts, parse_copy_text(bytes(self._pending))]
        return DeviceIndex(
            np.concatenate([p.keys for p in parts]),
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.active for p in parts]),
        )


def _parse_slowly(data: bytes) -> RegistryParts:
    keys, ids, active = [], [], []
    for line in data.splitlines():
        ext, dev, act = line.split(b"\t")
        keys.append(ext.decode("unicode_escape").encode("latin-1") if b"\\" in ext else ext)
        ids.append(int(dev))
        active.append(act == b"t")
    return RegistryParts(
        np.array(keys, dtype=np.bytes_), np.array(ids, np.int32), np.array(active, bool)
    )


class DeviceResolver:
    """Holds the in-memory ``DeviceIndex`` and resolves batches against it.

    Contract: ``resolve`` never queries per frame; it queries only to auto-provision devices
    it has never seen (one INSERT per batch, idempotent). Connections are in autocommit mode.
    """

    def __init__(self, policy: UnknownDevicePolicy) -> None:
        self.policy = policy
        self.index = DeviceIndex()
        self.profiles: dict[tuple[str, str], ProfileMatch] = {}
        self.watermark: datetime | None = None
        self.refreshes = 0
        self.on_change: list[Callable[[npt.NDArray[np.int64] | None], None]] = []
        """Called with the internal ids of devices that changed (None: all may have)."""

    async def load(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
        """Read profiles and every device into the index; return the device count."""
        await self.load_profiles(conn)
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            watermark = await self._horizon(conn)
            builder = IndexBuilder()
            async with conn.cursor() as cur, cur.copy(INDEX_COPY) as copy:
                async for block in copy:
                    builder.feed(block)
        self.index = builder.index()
        self.watermark = watermark
        for hook in self.on_change:
            hook(None)
        log.info(
            "device registry: %d devices loaded (%.0f MB in memory), %d profiles",
            len(self.index),
            self.index.nbytes / 1e6,
            len(self.profiles),
        )
        return len(self.index)

    async def load_profiles(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """The (kind, decoder) → profile map that decides what happens to unknown devices."""
        cur = await conn.execute(
            "SELECT kind, decoder, name, unknown_devices FROM device_profiles ORDER BY name"
        )
        self.profiles = {
            (str(kind), str(dec)): ProfileMatch(str(name), UnknownDevicePolicy(str(policy)))
            for kind, dec, name, policy in await cur.fetchall()
        }

    async def _horizon(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> datetime:
        """Where the next change-feed read starts (see ``_HORIZON``)."""
        try:
            cur = await conn.execute(_HORIZON)
            row = await cur.fetchone()
        except psycopg.Error:  # no statistics views (some embedded builds): be conservative
            row = None
        if row is None or not isinstance(row[0], datetime):
            return datetime.now(UTC) - WATERMARK_OVERLAP
        # sessions whose state we may not see (other roles): keep the overlap for them
        return row[0] - WATERMARK_OVERLAP if row[1] else row[0]

    async def refresh(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
        """Apply devices changed since the watermark; return how many rows were read."""
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        since = self.watermark or epoch
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            horizon = await self._horizon(conn)
            cur = await conn.execute(
                "SELECT external_id, id, status = 'active' FROM devices "
                "WHERE updated_at >= %s LIMIT %s",
                (since, FULL_RELOAD_ROWS + 1),
            )
            rows = await cur.fetchall()
        if len(rows) > FULL_RELOAD_ROWS:
            log.info("device registry: more than %d changes; reloading", FULL_RELOAD_ROWS)
            await self.load(conn)
        elif rows:
            self.index.upsert(
                np.array([str(r[0]).encode() for r in rows], dtype=np.bytes_),
                np.array([r[1] for r in rows], dtype=np.int32),
                np.array([r[2] for r in rows], dtype=np.bool_),
            )
            changed = np.array([r[1] for r in rows], dtype=np.int64)
            for hook in self.on_change:
                hook(changed)
        if len(rows) <= FULL_RELOAD_ROWS:
            self.watermark = horizon
        await self.load_profiles(conn)
        self.refreshes += 1
        return len(rows)

    async def follow(self, conninfo: str, poll_s: float, stop: asyncio.Event) -> None:
        """Keep the index current until ``stop``: LISTEN for changes, poll as a fallback."""
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute("LISTEN cityflux_devices")
                    await self.refresh(conn)
                    while not stop.is_set():
                        reload = False
                        gen = conn.notifies(timeout=poll_s, stop_after=1)
                        async for note in gen:
                            reload = note.payload == "DELETE"
                        if reload:
                            await self.load(conn)
                        else:
                            await self.refresh(conn)
            except psycopg.Error as exc:
                log.warning("device registry: change feed lost (%s); reconnecting", exc)
                await asyncio.sleep(min(poll_s, 5.0))

    def policy_for(self, kind: str, decoder: str) -> tuple[UnknownDevicePolicy, str | None]:
        """The unknown-device policy and profile for frames of this kind and decoder."""
        match = self.profiles.get((kind, decoder))
        if match is None:
            return self.policy, None
        return match.policy, match.name

    async def resolve(
        self,
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        devices: npt.NDArray[np.bytes_],
        kinds: npt.NDArray[np.bytes_],
        decoder: str = "",
    ) -> Resolution:
        """Resolve external ids; auto-provision unknown ones where the policy says so. Ids
        that break the registry's rule are never looked up further (only unknown ids are
        checked: registered ones passed the rule when they were registered)."""
        ids = self.index.resolve(devices)
        provisioned = 0
        miss = ids == UNKNOWN
        invalid = None
        if miss.any():
            at = np.flatnonzero(miss)
            bad = invalid_ids(devices[at])
            if bad.any():
                invalid = np.zeros(ids.shape[0], dtype=np.bool_)
                invalid[at[bad]] = True
                miss[at[bad]] = False
        if miss.any():
            new, first = np.unique(devices[miss], return_index=True)
            new_kinds = [k.decode() for k in kinds[miss][first]]
            take = []
            for j, kind in enumerate(new_kinds):
                policy, profile = self.policy_for(kind, decoder)
                if policy is UnknownDevicePolicy.AUTO_PROVISION:
                    take.append((new[j].decode(), kind or "unknown", profile))
            if take:
                provisioned = await self._provision(conn, take)
                ids = self.index.resolve(devices)
        unknown = ids == UNKNOWN
        if invalid is not None:
            unknown &= ~invalid
        return Resolution(
            ids=ids,
            ok=ids >= 0,
            unknown=unknown,
            disabled=ids == DISABLED,
            provisioned=provisioned,
            invalid=invalid,
        )

    async def _provision(
        self,
        conn: psycopg.AsyncConnection[tuple[object, ...]],
        new: list[tuple[str, str, str | None]],
    ) -> int:
        cur = await conn.execute(
            "INSERT INTO devices (external_id, kind, profile, provisioned) "
            "SELECT e, k, p, 'auto' FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(e, k, p) "
            "ON CONFLICT (external_id) DO UPDATE SET updated_at = devices.updated_at "
            "RETURNING external_id, id, status = 'active', (xmax = 0)",
            ([n[0] for n in new], [n[1] for n in new], [n[2] for n in new]),
        )
        rows = await cur.fetchall()
        self.index.upsert(
            np.array([str(r[0]).encode() for r in rows], dtype=np.bytes_),
            np.array([r[1] for r in rows], dtype=np.int32),
            np.array([r[2] for r in rows], dtype=np.bool_),
        )
        return sum(1 for r in rows if r[3])
