"""``cityflux bench``: cityflux against the machine's true limits and peers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def bench(
    quick: Annotated[bool, typer.Option(help="one run of smaller sizes, about a minute")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    plot: Annotated[
        bool,
        typer.Option(help="draw RESULTS/history.jsonl over commits as a PNG; no measuring"),
    ] = False,
    plot_to: Annotated[
        Path | None, typer.Option(help="where --plot writes (default RESULTS/history.png)")
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option(help="folder for latest.json/.txt and history.jsonl (default bench/results)"),
    ] = None,
) -> None:
    """Measure cityflux against the machine's limits and peers (bench/README.md): a private
    mosquitto, a fresh database on the local PostgreSQL (or a throwaway cluster). Every run
    appends its figures to RESULTS/history.jsonl (RESULTS: --results, default bench/results)."""
    from bench.__main__ import main as run_bench

    where = ["--results", str(results)] if results else []
    if plot:
        run_bench([*where, "--plot", *([str(plot_to)] if plot_to else [])])
        return
    run_bench([*where, *(["--quick"] if quick else []), *(["--json"] if as_json else [])])
