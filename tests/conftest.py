"""One fixture per real service: use the machine's when reachable, else start our own.

- PostgreSQL: CITYFLUX_TEST_PG_URL, else 127.0.0.1:5432 (database ``test``), else an embedded
  cluster; every test that writes gets a fresh database of its own.
- MQTT: CITYFLUX_TEST_MQTT (host:port), else 127.0.0.1:1883, else an embedded broker; every test
  gets a unique topic prefix.
- TimescaleDB: the real extension under Node (PGlite), restarted per test module.
- Prometheus: Debian's binary (``apt-get install prometheus``; .ci/run installs it), one per
  test that asks, started once the test knows what to scrape.

CITYFLUX_TEST_EMBEDDED=1 ignores the machine's services and starts private ones, as on a
fresh machine (the fallback path, exercised on purpose).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from ingest.broker import EmbeddedBroker
from storage.embedded import EmbeddedPostgres, free_port, reachable
from tests.services import PrometheusServer, TimescaleWasm

EMBEDDED = os.environ.get("CITYFLUX_TEST_EMBEDDED") == "1"


@dataclass(frozen=True)
class Broker:
    """An MQTT broker the tests can use."""

    host: str
    port: int
    v5: bool


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server (its admin database)."""
    if url := os.environ.get("CITYFLUX_TEST_PG_URL"):
        yield url
    elif not EMBEDDED and reachable("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/test"
    else:
        pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg")).start()
        yield pg.url
        pg.stop()


def _swap_db(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database for one test (dropped afterwards)."""
    name = f"cityflux_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _swap_db(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """An MQTT broker (MQTT 5 unless it is the amqtt fallback)."""
    if spec := os.environ.get("CITYFLUX_TEST_MQTT"):
        host, _, port = spec.rpartition(":")
        yield Broker(host, int(port), True)
    elif not EMBEDDED and reachable("127.0.0.1", 1883):
        yield Broker("127.0.0.1", 1883, True)
    else:
        emb = EmbeddedBroker(tmp_path_factory.mktemp("broker")).start()
        yield Broker("127.0.0.1", emb.port, emb.supports_v5)
        emb.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def timescaledb() -> Iterator[TimescaleWasm]:
    """The real TimescaleDB extension (PGlite WASM), one server per test module."""
    ts = TimescaleWasm(free_port()).start()
    yield ts
    ts.stop()


@pytest.fixture
def embedded_pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A private PostgreSQL cluster the test may stop and start (outage tests)."""
    pg = EmbeddedPostgres(tmp_path / "pg").start()
    yield pg
    pg.stop("immediate")


PROMETHEUS_BIN = shutil.which("prometheus")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], PrometheusServer]]:
    """Start a real Prometheus scraping the given targets (with the shipped rules); skipped
    where the binary is missing, except in CI."""
    if PROMETHEUS_BIN is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is required in CI")
        pytest.skip("needs Debian's prometheus (apt-get install prometheus); .ci/run installs it")
    servers: list[PrometheusServer] = []

    def start(targets: list[str]) -> PrometheusServer:
        assert PROMETHEUS_BIN is not None
        server = PrometheusServer(PROMETHEUS_BIN, tmp_path / "prometheus", free_port())
        servers.append(server)
        return server.start(targets)

    yield start
    for server in servers:
        server.stop()
