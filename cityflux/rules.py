"""``cityflux rules``: validate rules, test them against recorded frames."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

rules_app = typer.Typer(
    help="Alert rules: validate, test against recorded frames.", no_args_is_help=True
)


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
