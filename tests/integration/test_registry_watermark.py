"""The registry's change-feed watermark (what CityfluxRegistryFeedLagging watches) is held
back by a long transaction on its own database only, as the alert's runbook says."""

from __future__ import annotations

import psycopg

from decoders.tables import ALL_TABLES
from device_registry.resolver import DeviceResolver, UnknownDevicePolicy
from storage.migrate import TimescaleMode, migrate


async def test_only_a_transaction_on_the_registry_database_holds_the_watermark(
    pg_url: str, pg_server: str
) -> None:
    migrate(pg_url, ALL_TABLES, TimescaleMode.OFF)
    resolver = DeviceResolver(UnknownDevicePolicy.REJECT)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        elsewhere = psycopg.connect(pg_server)  # another database of the cluster
        try:
            elsewhere.execute("SELECT 1")  # a transaction open there (idle in transaction)
            started = elsewhere.execute("SELECT now()").fetchone()
            assert started is not None
            await resolver.refresh(conn)
            assert resolver.watermark is not None
            assert resolver.watermark > started[0]  # another database: not held back
        finally:
            elsewhere.close()
        here = psycopg.connect(pg_url)
        try:
            here.execute("SELECT 1")
            started = here.execute("SELECT now()").fetchone()
            assert started is not None
            await resolver.refresh(conn)
            assert resolver.watermark == started[0]  # this database: held back to its start
        finally:
            here.close()
