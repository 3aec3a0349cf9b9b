"""``cityflux bench``: cityflux against the machine's limits and peers."""

from __future__ import annotations

from typing import Annotated

import typer


def bench(
    quick: Annotated[bool, typer.Option(help="one run of smaller sizes, under a minute")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Measure cityflux against the machine's limits and peers (bench/README.md): a private
    mosquitto, a fresh database on the local PostgreSQL (or a throwaway cluster)."""
    from bench.__main__ import main as run_bench

    run_bench([*(["--quick"] if quick else []), *(["--json"] if as_json else [])])
