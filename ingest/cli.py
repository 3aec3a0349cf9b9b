"""The ``cityflux`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer

from ingest.config import ConfigError, Settings, load_settings


class Transport(StrEnum):
    """How a simulated fleet reaches the service."""

    MQTT = "mqtt"
    COAP = "coap"


app = typer.Typer(
    help="cityflux: smart-city device ingest into TimescaleDB, with alerts.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="CITYFLUX_CONFIG",
        help="TOML config file",
        exists=True,
        dir_okay=False,
    ),
]


def _settings(config: Path | None, log_level: str | None = None) -> Settings:
    """The config (a clear error and exit 2 when invalid), with logging set up from it (or at
    ``log_level``: fleet commands keep the service's INFO lines off their report)."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=log_level or settings.log_level.value,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return settings


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Run the ingest service against the configured broker and database."""
    from ingest.app import serve as run
    from ingest.yamlfile import DocumentError

    try:
        asyncio.run(run(_settings(config)))
    except DocumentError as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="one run of smaller sizes, under a minute")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Measure cityflux against the machine's limits and peers (bench/README.md): a private
    mosquitto, a fresh database on the local PostgreSQL (or a throwaway cluster)."""
    from bench.__main__ import main as run_bench

    run_bench([*(["--quick"] if quick else []), *(["--json"] if as_json else [])])


@app.command()
def demo(
    config: ConfigOpt = None,
    scenario: Annotated[
        Path | None, typer.Option(help="scenario YAML (default: simulators/scenarios/demo.yaml)")
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
    from ingest.demo import demo_scenario, run_demo
    from ingest.fleet_cli import _print_report
    from ingest.yamlfile import DocumentError

    settings = _settings(config)
    try:
        sc = demo_scenario(scenario, duration, rate, transport.value if transport else None)
    except (DocumentError, ValueError) as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.getLogger().setLevel(logging.WARNING)
    report = run_demo(settings, config, sc, data_dir)
    _print_report(report, as_json)
    if not as_json:
        typer.echo(f"database: {report['database']}; broker: {report['broker']}")
    if report["lost"]:
        raise typer.Exit(1)


@db_app.command("migrate")
def db_migrate(config: ConfigOpt = None) -> None:
    """Apply pending migrations and create the declared telemetry tables."""
    from decoders.registry import load_registry
    from storage.migrate import MigrationError, migrate

    settings = _settings(config)
    try:
        backend = migrate(
            settings.database.url.get_secret_value(),
            load_registry().tables(),
            settings.database.timescaledb,
        )
    except MigrationError as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"schema up to date (backend: {backend})")


@app.command()
def decode(
    fmt: Annotated[str, typer.Option("--format", "-f", help="decoder name")],
    source: Annotated[str, typer.Argument(help="file with one frame per line, or -")] = "-",
    hex_input: Annotated[bool, typer.Option("--hex", help="lines are hex-encoded bytes")] = False,
    path: Annotated[str, typer.Option(help="source path, e.g. /3303/0 for lwm2m-tlv")] = "cli",
    device: Annotated[str, typer.Option(help="device id the transport would name")] = "",
) -> None:
    """Decode frames (one per line) and print one JSON object per frame."""
    from ingest.decode_cli import run_decode

    raise typer.Exit(run_decode(fmt, source, hex_input, path, device))


# -- device registry ----------------------------------------------------------------------
devices_app = typer.Typer(help="Device registry: import, export, list, show.", no_args_is_help=True)
profiles_app = typer.Typer(help="Device profiles.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
app.add_typer(profiles_app, name="profiles")


def _registry_conn(config: Path | None) -> psycopg.Connection[tuple[object, ...]]:
    """A connection to a migrated database (migrations are applied if pending)."""
    from decoders.registry import load_registry
    from storage.migrate import MigrationError, migrate

    settings = _settings(config)
    url = settings.database.url.get_secret_value()
    try:
        migrate(url, load_registry().tables(), settings.database.timescaledb)
        return psycopg.connect(url, autocommit=True)
    except (MigrationError, psycopg.OperationalError) as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(1) from None


def _print_rows(
    rows: list[dict[str, Any]], columns: list[str], as_json: bool, header: bool = True
) -> None:
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False, show_header=header)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console(width=200).print(table)


@devices_app.command("import")
def devices_import(
    file: Annotated[Path, typer.Argument(help="CSV (header row) or JSON Lines (.jsonl)")],
    config: ConfigOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Upsert devices from a file; invalid lines are reported and skipped (exit 1 if any)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from device_registry.importer import ImportFormatError, import_devices

    if not file.is_file():
        typer.echo(f"cityflux: {file}: no such file", err=True)
        raise typer.Exit(2)
    with _registry_conn(config) as conn:
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=quiet,
            transient=True,
        )
        with progress:
            task = progress.add_task(f"reading {file.name}", total=file.stat().st_size)

            def step(done: int, total: int, what: str) -> None:
                progress.update(task, completed=done, total=total, description=what)

            try:
                result = import_devices(conn, file, step)
            except ImportFormatError as exc:
                typer.echo(f"cityflux: {exc}", err=True)
                raise typer.Exit(2) from None
    for err in result.errors:
        typer.echo(f"{file}:{err.line}: {err.field}: {err.message}", err=True)
    typer.echo(
        f"{result.imported} devices imported ({result.inserted} new, {result.updated} updated, "
        f"{result.unchanged} unchanged, {result.duplicates} repeated lines superseded); "
        f"{len(result.errors)} invalid lines"
    )
    if result.errors:
        raise typer.Exit(1)


@devices_app.command("export")
def devices_export(
    file: Annotated[Path | None, typer.Argument(help="output CSV (default: stdout)")] = None,
    config: ConfigOpt = None,
    with_secrets: Annotated[
        bool,
        typer.Option(
            "--with-secrets",
            help="also the OSCORE keys (oscore_secret, oscore_salt), in a file only its owner "
            "can read: a registry that can be imported into an empty one",
        ),
    ] = False,
) -> None:
    """Every device as CSV in the import format."""
    from device_registry.store import export_csv

    with _registry_conn(config) as conn:
        if file is None:
            export_csv(conn, sys.stdout.buffer, secrets=with_secrets)
            return
        if with_secrets:  # created owner-only: the file holds the devices' keys
            file.unlink(missing_ok=True)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                export_csv(conn, out, secrets=True)
        else:
            with file.open("wb") as out:
                export_csv(conn, out)


LIST_TABLE_ROWS = 100  # `devices list` shows this many in its table unless told otherwise
LIST_PAGE_ROWS = 10_000  # --json without --limit reads the registry this many at a time


@devices_app.command("list")
def devices_list(
    config: ConfigOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="only offline devices")] = False,
    online: Annotated[bool, typer.Option("--online", help="only online devices")] = False,
    profile: Annotated[str | None, typer.Option(help="only this profile")] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="at most this many (default: 100 in the table, all with --json)"),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="every matching device")] = False,
    after: Annotated[int, typer.Option(help="page after this internal id")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines")] = False,
) -> None:
    """Devices with their online status (the table shows 100 and says how many match)."""
    from device_registry.store import count_devices, list_devices

    if offline and online:
        typer.echo("cityflux: --offline and --online exclude each other", err=True)
        raise typer.Exit(2)
    if all_ and limit is not None:
        typer.echo("cityflux: --all and --limit exclude each other", err=True)
        raise typer.Exit(2)
    state = True if offline else (False if online else None)
    filters: dict[str, Any] = {"offline": state, "profile": profile}
    cols = ["id", "external_id", "profile", "kind", "status", "last_seen", "online"]
    with _registry_conn(config) as conn:
        if limit is None and (all_ or as_json):  # everything, read a page at a time
            last = after
            while True:
                rows = list_devices(conn, **filters, after_id=last, limit=LIST_PAGE_ROWS)
                if as_json:
                    _print_rows(rows, cols, as_json=True)
                elif rows or last == after:
                    _print_rows(rows, cols, as_json=False, header=last == after)
                if len(rows) < LIST_PAGE_ROWS:
                    return
                last = int(rows[-1]["id"])
        shown = limit or LIST_TABLE_ROWS
        rows = list_devices(conn, **filters, after_id=after, limit=shown + 1)
        more = len(rows) > shown
        rows = rows[:shown]
        total = count_devices(conn, **filters, after_id=after) if more else len(rows)
    _print_rows(rows, cols, as_json)
    if more and as_json:  # JSON pages are asked for explicitly: say where the next starts
        typer.echo(
            f"showing {len(rows):,} of {total:,}; next page: --after {rows[-1]['id']}", err=True
        )
    elif more:
        typer.echo(f"showing {len(rows):,} of {total:,}; --limit or --all")


@devices_app.command("show")
def devices_show(
    device: Annotated[str, typer.Argument(help="external id, or #<internal id>")],
    config: ConfigOpt = None,
) -> None:
    """One device as JSON."""
    from device_registry.store import get_device

    with _registry_conn(config) as conn:
        row = get_device(conn, device)
    if row is None:
        typer.echo(f"cityflux: no device {device!r}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(row, indent=2, default=str))


@devices_app.command("credentials")
def devices_credentials(
    password_file: Annotated[Path, typer.Option("--password-file", help="Mosquitto passwd")],
    acl_file: Annotated[Path, typer.Option("--acl-file", help="Mosquitto ACL file")],
    config: ConfigOpt = None,
) -> None:
    """Write Mosquitto's password and ACL files from the registry (reload it with SIGHUP)."""
    from device_registry.credentials import export_mosquitto

    settings = _settings(config)
    service = None
    if settings.mqtt.username and settings.mqtt.password:
        service = (settings.mqtt.username, settings.mqtt.password.get_secret_value())
    prefix = (
        settings.mqtt.topics[0].split("/up/")[0]
        if "/up/" in settings.mqtt.topics[0]
        else "cityflux"
    )
    with _registry_conn(config) as conn:
        done = export_mosquitto(conn, password_file, acl_file, prefix, service)
    typer.echo(f"{done.devices} device credentials -> {password_file}; ACL -> {acl_file}")


@profiles_app.command("import")
def profiles_import(
    file: Annotated[Path, typer.Argument(help="YAML or JSON: profiles: [...]")],
    config: ConfigOpt = None,
) -> None:
    """Upsert device profiles by name."""
    from decoders.registry import load_registry
    from device_registry.profiles import DocumentError, load_profiles, store

    try:
        profiles = load_profiles(file, set(load_registry().names()))
    except DocumentError as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
    with _registry_conn(config) as conn:
        changed = store(conn, profiles)
    typer.echo(f"{len(profiles)} profiles read, {changed} inserted or changed")


@profiles_app.command("list")
def profiles_list(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines")] = False,
) -> None:
    """Profiles with their device counts."""
    from device_registry.store import list_profiles

    with _registry_conn(config) as conn:
        rows = list_profiles(conn)
    cols = ["name", "kind", "decoder", "report_interval_s", "unknown_devices", "devices"]
    _print_rows(rows, cols, as_json)


# -- rules --------------------------------------------------------------------------------
rules_app = typer.Typer(
    help="Alert rules: validate, test against recorded frames.", no_args_is_help=True
)
app.add_typer(rules_app, name="rules")


@rules_app.command("check")
def rules_check(file: Annotated[Path, typer.Argument(help="rules YAML file")]) -> None:
    """Validate a rules file (errors name the file, line and field)."""
    from alerts.offline import run_check

    raise typer.Exit(run_check(file))


@rules_app.command("test")
def rules_test(
    rules: Annotated[Path, typer.Option("--rules", "-r", help="rules YAML file")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="decoder name")],
    source: Annotated[str, typer.Argument(help="file with one frame per line, or -")] = "-",
    hex_input: Annotated[bool, typer.Option("--hex", help="lines are hex-encoded bytes")] = False,
    path: Annotated[str, typer.Option(help="source path, e.g. /3303/0 for lwm2m-tlv")] = "cli",
    device: Annotated[str, typer.Option(help="device id the transport would name")] = "",
    devices: Annotated[
        Path | None,
        typer.Option(help="devices file (import format): locations, road positions, install"),
    ] = None,
    profiles: Annotated[
        Path | None, typer.Option(help="profiles file: report intervals for absence rules")
    ] = None,
) -> None:
    """Decode frames, run the rules in frame time, print one JSON object per alert event."""
    from alerts.offline import run_test

    raise typer.Exit(run_test(rules, fmt, source, hex_input, path, device, devices, profiles))


# -- fleets: simulate, record, replay (ingest/fleet_cli.py) ----------------------------------
def _fleet_commands() -> None:
    from ingest.fleet_cli import register_commands

    register_commands(app)


_fleet_commands()
