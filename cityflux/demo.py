"""``cityflux demo``: embedded PostgreSQL and broker (unless configured), the service, and a
simulated city (``simulators/scenarios/demo.yaml`` or ``--scenario``) registered and run
against it; then the loss-accounting report, from the database itself."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cityflux.common import ConfigOpt, Transport, print_report, settings_of
from core.mqtt import MqttProtocol
from ingest.broker import EmbeddedBroker
from ingest.settings import ENV_PREFIX, CoapMode, Settings
from simulators.scenario import Scenario, load_scenario
from storage.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)


@dataclass
class DemoEnvironment:
    """Where the demo's database and broker came from."""

    database: str
    broker: str


def _configured(section: str, config_file: Path | None) -> bool:
    prefix = f"{ENV_PREFIX}{section.upper()}__"
    if any(k.startswith(prefix) for k in os.environ):
        return True
    return config_file is not None and f"[{section}]" in config_file.read_text()


def prepare(
    settings: Settings, config_file: Path | None, data_dir: Path, stack: ExitStack
) -> DemoEnvironment:
    """Start an embedded database and broker for whatever is not configured."""
    env = DemoEnvironment("configured", "configured")
    if not _configured("database", config_file):
        pg = EmbeddedPostgres(data_dir / "postgres").start()
        stack.callback(pg.stop)
        settings.database.url = pg.url  # type: ignore[assignment]
        env.database = f"embedded PostgreSQL ({pg.bindir})"
    if not _configured("mqtt", config_file):
        broker = EmbeddedBroker(data_dir / "broker").start()
        stack.callback(broker.stop)
        settings.mqtt.host, settings.mqtt.port = "127.0.0.1", broker.port
        if not broker.supports_v5:
            settings.mqtt.protocol = MqttProtocol.V311
        env.broker = f"embedded {broker.kind}"
    settings.mqtt.client_id = f"cityflux-demo-{uuid.uuid4().hex[:8]}"
    settings.http.port = 0
    return env


SCENARIOS = Path(__file__).parents[1] / "simulators" / "scenarios"
DEMO_SCENARIO = SCENARIOS / "demo.yaml"


def scenario_path(name: Path | None) -> Path:
    """A scenario file, or the name of a shipped one (``parking`` is
    ``simulators/scenarios/parking.yaml``)."""
    if name is None:
        return DEMO_SCENARIO
    shipped = SCENARIOS / f"{name}.yaml"
    if not name.is_file() and name.parent == Path() and shipped.exists():
        return shipped
    return name


def demo_scenario(
    path: Path | None,
    duration_s: float | None,
    rate_cap: float | None,
    transport: str | None,
) -> Scenario:
    """The scenario the demo runs: ``path`` or the built-in one, with the CLI's overrides
    (``transport`` moves every group to MQTT QoS 1 or CoAP CON)."""
    sc = load_scenario(scenario_path(path))
    data = sc.model_dump()
    if duration_s is not None:
        data["duration_s"] = duration_s
    if rate_cap is not None:
        data["rate_cap_per_s"] = rate_cap
    if transport is not None:
        for g in data["groups"]:
            g.update(transport=transport, qos=1, confirmable=True)
    return Scenario.model_validate(data)


def _fleet(scenario: Scenario, settings: Settings, metrics_port: int) -> dict[str, Any]:
    """The fleet's side, in its own process: register, run, account."""
    logging.basicConfig(level=logging.WARNING)
    from simulators.session import run_scenario  # the fleet's stack, loaded when it runs

    return run_scenario(scenario, settings, do_register=True, metrics_port=metrics_port)


async def _run(settings: Settings, scenario: Scenario) -> dict[str, Any]:
    from ingest.service import Service  # the service's stack, loaded when it runs

    service = Service(settings)
    task = asyncio.create_task(service.run(), name="demo.service")
    started = asyncio.ensure_future(service.started.wait())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert service.mqtt is not None
    await service.mqtt.wait_connected(30)
    fleet_settings = settings.model_copy(deep=True)
    if service.coap is not None and service.coap.port is not None:
        fleet_settings.coap.port = service.coap.port
    assert service.http_port is not None
    # The fleet runs in its own process so that it does not share the service's GIL.
    loop = asyncio.get_running_loop()
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            report = await loop.run_in_executor(
                pool, _fleet, scenario, fleet_settings, service.http_port
            )
        if "parking_lots" in report:  # what the service holds, next to what the fleet did
            report["parking_lots_stored"] = await asyncio.to_thread(
                _lots_now, settings.database.url.get_secret_value(), settings.parking.debounce_s
            )
    finally:
        service.stop()
        await task
    report["backend"] = service.backend.value if service.backend else None
    return report


def _lots_now(url: str, hold_s: float) -> list[dict[str, Any]]:
    import psycopg

    from parking.store import lots_now

    with psycopg.connect(url, autocommit=True) as conn:
        return lots_now(conn, hold_s)


def print_lots(report: dict[str, Any]) -> None:
    """Each lot: capacity, spaces taken in the simulation, and what the service shows."""
    stored = {x["lot"]: x for x in report.get("parking_lots_stored") or []}
    typer.echo("\nparking lots: simulated vs GET /api/v1/parking/lots")
    typer.echo(f"{'lot':<16}{'capacity':>9}{'simulated':>11}{'occupied':>10}{'free':>7}{'%':>7}")
    for lot in report["parking_lots"]:
        got = stored.get(lot["lot"], {})
        typer.echo(
            f"{lot['lot']:<16}{lot['capacity']:>9}{lot['occupied']:>11}"
            f"{got.get('occupied', '-')!s:>10}{got.get('free', '-')!s:>7}"
            f"{got.get('occupied_pct', '-')!s:>7}"
        )


def run_demo(
    settings: Settings,
    config_file: Path | None,
    scenario: Scenario,
    data_dir: Path | None,
) -> dict[str, Any]:
    """Run the whole demo and return its report."""
    with ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cityflux-")))
        env = prepare(settings, config_file, data_dir, stack)
        if any(g.transport.value == "coap" for g in scenario.groups):
            if settings.coap.mode is CoapMode.OFF:
                settings.coap.mode = CoapMode.OPEN
            if not _configured("coap", config_file):
                settings.coap.port = 0
        report = asyncio.run(_run(settings, scenario))
        report["database"], report["broker"] = env.database, env.broker
        return report


def demo(
    config: ConfigOpt = None,
    scenario: Annotated[
        Path | None,
        typer.Option(
            help="scenario YAML, or a shipped one's name: parking "
            "(default: simulators/scenarios/demo.yaml)"
        ),
    ] = None,
    duration: Annotated[float | None, typer.Option(help="seconds of device time to send")] = None,
    rate: Annotated[float | None, typer.Option(help="cap on the fleet's frames per second")] = None,
    transport: Annotated[
        Transport | None, typer.Option(help="send every group over mqtt (QoS 1) or coap (CON)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    data_dir: Annotated[Path | None, typer.Option(help="keep the embedded services here")] = None,
) -> None:
    """Embedded PostgreSQL and broker, the service, a simulated city; the loss accounting."""
    from core.yamlfile import DocumentError

    settings = settings_of(config)
    try:
        sc = demo_scenario(scenario, duration, rate, transport.value if transport else None)
    except (DocumentError, ValueError) as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.getLogger().setLevel(logging.WARNING)
    report = run_demo(settings, config, sc, data_dir)
    print_report(report, as_json)
    if not as_json:
        if "parking_lots" in report:
            print_lots(report)
        typer.echo(f"database: {report['database']}; broker: {report['broker']}")
    if report["lost"]:
        raise typer.Exit(1)
