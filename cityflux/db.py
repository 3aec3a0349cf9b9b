"""``cityflux db``: the database schema."""

from __future__ import annotations

import typer

from cityflux.common import ConfigOpt, settings_of

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("migrate")
def db_migrate(config: ConfigOpt = None) -> None:
    """Apply pending migrations and create the declared telemetry tables."""
    from decoders.registry import load_registry
    from storage.migrate import MigrationError, migrate

    settings = settings_of(config)
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
