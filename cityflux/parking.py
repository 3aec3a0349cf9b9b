"""``cityflux parking``: parking lots and their occupancy now."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cityflux.common import ConfigOpt, print_rows, registry_conn, settings_of

parking_app = typer.Typer(help="Smart parking: lots and free spaces.", no_args_is_help=True)
LOT_COLUMNS = ["lot", "name", "capacity", "sensors", "heard_24h", "occupied", "free"]


@parking_app.command("import-lots")
def import_lots(
    file: Annotated[Path, typer.Argument(help="CSV: lot,capacity[,name,district,lat,lon]")],
    config: ConfigOpt = None,
) -> None:
    """Upsert parking lots (id and capacity) from CSV; bad lines reported, the rest imported."""
    from parking.lots import LotsFileError, read_lots, upsert_lots

    try:
        lots, errors = read_lots(file)
    except LotsFileError as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
    for line in errors:
        typer.echo(line, err=True)
    with registry_conn(config) as conn:
        changed = upsert_lots(conn, lots)
    typer.echo(f"{len(lots)} lots read, {changed} inserted or changed, {len(errors)} bad lines")
    if errors:
        raise typer.Exit(1)


@parking_app.command("lots")
def lots(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines")] = False,
) -> None:
    """Every lot with its capacity, sensors and free spaces now."""
    from parking.store import lots_now

    hold_s = settings_of(config).parking.debounce_s
    with registry_conn(config) as conn:
        rows = lots_now(conn, hold_s)
    print_rows(rows, LOT_COLUMNS, as_json)
