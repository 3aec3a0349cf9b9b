"""The ``cityflux`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from ingest.config import ConfigError, Settings, load_settings

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


def _settings(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level.value,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return settings


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Run the ingest service against the configured broker and database."""
    from ingest.app import serve as run

    asyncio.run(run(_settings(config)))


@app.command()
def demo(
    config: ConfigOpt = None,
    duration: Annotated[float, typer.Option(help="seconds the simulated fleet sends")] = 10.0,
    rate: Annotated[float, typer.Option(help="fleet's total frames per second cap")] = 5_000.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    data_dir: Annotated[Path | None, typer.Option(help="keep the embedded services here")] = None,
) -> None:
    """Run service + embedded PostgreSQL/broker + a simulated fleet; print the summary."""
    from ingest.demo import run_demo

    settings = _settings(config)
    if as_json:
        logging.getLogger().setLevel(logging.WARNING)
    summary = run_demo(settings, config, duration, rate, data_dir)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        for key, value in summary.items():
            typer.echo(f"{key:>18}: {value}")
    if summary["lost"]:
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
