"""``cityflux profiles``: device profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cityflux.common import ConfigOpt, cli_principal, print_rows, registry_conn

profiles_app = typer.Typer(help="Device profiles.", no_args_is_help=True)


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
    with registry_conn(config) as conn:
        changed = store(conn, profiles, cli_principal(), str(file))
    typer.echo(f"{len(profiles)} profiles read, {changed} inserted or changed")


@profiles_app.command("list")
def profiles_list(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines")] = False,
) -> None:
    """Profiles with their device counts."""
    from device_registry.store import list_profiles

    with registry_conn(config) as conn:
        rows = list_profiles(conn)
    cols = ["name", "kind", "decoder", "report_interval_s", "unknown_devices", "devices"]
    print_rows(rows, cols, as_json)
