"""``cityflux serve``: run the service (one process, or a supervisor and its workers)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from cityflux.common import ConfigOpt, settings_of


def serve(
    config: ConfigOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            max=64,
            help="worker processes in one MQTT 5 shared subscription (default: the config's "
            "workers)",
        ),
    ] = None,
) -> None:
    """Run the ingest service against the configured broker and database."""
    from pydantic import ValidationError

    from core.yamlfile import DocumentError
    from ingest.service import serve as run
    from ingest.workers import Supervisor, earlier_workers

    settings = settings_of(config)
    if workers is not None:
        try:
            settings.workers = workers  # validated against the rest of the settings
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
            typer.echo(
                f"cityflux: invalid configuration:\n  workers: {msg} (from command line)",
                err=True,
            )
            raise typer.Exit(2) from None
    # one worker after a run with several: worker 0 resumes its session, the rest are retired
    if settings.workers > 1 or earlier_workers(settings):
        raise typer.Exit(Supervisor(settings).run())
    try:
        asyncio.run(run(settings))
    except DocumentError as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
