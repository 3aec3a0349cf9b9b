"""``cityflux serve``: run the service."""

from __future__ import annotations

import asyncio

import typer

from cityflux.common import ConfigOpt, settings_of


def serve(config: ConfigOpt = None) -> None:
    """Run the ingest service against the configured broker and database."""
    from core.yamlfile import DocumentError
    from ingest.service import serve as run

    try:
        asyncio.run(run(settings_of(config)))
    except DocumentError as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
