"""The registry's background work inside the service: follow changes, flush last seen, count
devices online and parking lots connected. One task, its own connections, stopped with the
service."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from core.metrics import Metrics
from device_registry.config import RegistryConfig
from device_registry.lastseen import LastSeen
from device_registry.resolver import DeviceResolver

log = logging.getLogger(__name__)

_STATUS_SQL = (
    "SELECT COALESCE(profile, ''), "
    "count(*) FILTER (WHERE status = 'active' AND online), "
    "count(*) FILTER (WHERE status = 'active' AND online IS false AND last_seen IS NOT NULL), "
    "count(*) FILTER (WHERE status = 'active' AND last_seen IS NULL), "
    "count(*) FILTER (WHERE status = 'disabled') "
    "FROM device_status_view GROUP BY 1"
)
# registered lots with a space sensor heard within 24 h, and registered lots (the seed's
# target: every key car park connected)
_LOTS_CONNECTED_SQL = (
    "SELECT count(*) FILTER (WHERE EXISTS (SELECT 1 FROM devices d WHERE d.lot = l.lot "
    "AND d.last_seen > now() - interval '24 hours')), count(*) FROM parking_lots l"
)


async def run_upkeep(
    conninfo: str,
    cfg: RegistryConfig,
    resolver: DeviceResolver,
    last_seen: LastSeen,
    metrics: Metrics,
    stop: asyncio.Event,
) -> None:
    """Until ``stop``: follow the change feed, flush last seen, refresh the state gauges;
    then flush last seen one final time."""
    follow = asyncio.create_task(resolver.follow(conninfo, cfg.refresh_s, stop))
    loop = asyncio.get_running_loop()
    next_status = loop.time() + min(cfg.status_interval_s, 30.0)  # not during startup
    counted = 0
    try:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    while not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), cfg.last_seen_flush_s)
                        await _flush(conn, last_seen, metrics)
                        metrics.registry_refreshes.inc(resolver.refreshes - counted)
                        counted = resolver.refreshes
                        if cfg.status_interval_s and loop.time() >= next_status:
                            next_status = loop.time() + cfg.status_interval_s
                            await _states(conn, metrics)
                    await _flush(conn, last_seen, metrics)
                    return
            except psycopg.OperationalError as exc:  # the database went away: keep trying
                log.warning("device registry: database unavailable (%s); retrying", exc)
                if stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(cfg.last_seen_flush_s, 2.0))
    finally:
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow


async def _flush(
    conn: psycopg.AsyncConnection[tuple[object, ...]], last_seen: LastSeen, metrics: Metrics
) -> None:
    try:
        metrics.last_seen_written.inc(await last_seen.flush(conn))
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        log.warning("device registry: last seen not written yet (%s); will retry", exc)


async def _states(conn: psycopg.AsyncConnection[tuple[object, ...]], metrics: Metrics) -> None:
    cur = await conn.execute(_STATUS_SQL)
    for profile, online, offline, never, disabled in await cur.fetchall():
        for state, count in (
            ("online", online),
            ("offline", offline),
            ("never_seen", never),
            ("disabled", disabled),
        ):
            metrics.devices_by_state.labels(str(profile), state).set(float(str(count)))
    cur = await conn.execute(_LOTS_CONNECTED_SQL)
    row = await cur.fetchone()
    heard, lots = (int(str(row[0])), int(str(row[1]))) if row else (0, 0)
    metrics.parking_lots_connected_ratio.set(heard / lots if lots else 0.0)
