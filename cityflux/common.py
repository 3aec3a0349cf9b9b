"""What the command groups share: the config option, settings with logging, the registry
connection, tables and reports on the terminal."""

from __future__ import annotations

import json
import os
import pwd
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer

from core.access import ActorKind, Principal
from core.logformat import configure_logging
from ingest.settings import ConfigError, Settings, load_settings


class Transport(StrEnum):
    """How a simulated fleet reaches the service."""

    MQTT = "mqtt"
    COAP = "coap"


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


def settings_of(config: Path | None, log_level: str | None = None) -> Settings:
    """The config (a clear error and exit 2 when invalid), with logging set up from it (or at
    ``log_level``: fleet commands keep the service's INFO lines off their report)."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(log_level or settings.log_level.value, settings.log_format)
    return settings


def registry_conn(config: Path | None) -> psycopg.Connection[tuple[object, ...]]:
    """A connection to a migrated database (migrations are applied if pending)."""
    from decoders.registry import load_registry
    from storage.migrate import MigrationError, migrate

    settings = settings_of(config)
    url = settings.database.url.get_secret_value()
    try:
        migrate(url, load_registry().tables(), settings.database.timescaledb)
        return psycopg.connect(url, autocommit=True)
    except (MigrationError, psycopg.OperationalError) as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(1) from None


def print_rows(
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


def print_report(report: dict[str, Any], as_json: bool) -> None:
    from simulators.accounting import render

    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(
        f"scenario {report['scenario']} (seed {report['seed']}): {report['devices']:,} devices"
    )
    typer.echo(render(report))


def cli_principal() -> Principal:
    """Who a state change made from the command line is audited as: the OS user."""
    # the account of the process's uid, not getpass.getuser(): that reads $LOGNAME and $USER
    # first, so `USER=alice cityflux ...` would be audited as alice
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # no passwd entry (a container's arbitrary uid)
        name = f"uid:{os.getuid()}"
    return Principal(name, ActorKind.CLI)
