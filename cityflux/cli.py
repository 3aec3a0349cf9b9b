"""The ``cityflux`` command line: the root app; each command group is a module of its own."""

from __future__ import annotations

import typer

from cityflux import (
    bench,
    db,
    decode,
    demo,
    devices,
    fleet,
    parking,
    profiles,
    rules,
    serve,
    status,
    tokens,
)

app = typer.Typer(
    help="cityflux: smart-city device ingest into TimescaleDB, with alerts.",
    no_args_is_help=True,
    add_completion=False,
)
app.command()(serve.serve)
app.command()(status.status)
app.command()(bench.bench)
app.command()(demo.demo)
app.command()(decode.decode)
app.command()(fleet.simulate)
app.command()(fleet.replay)
app.command()(fleet.record)
app.add_typer(db.db_app, name="db")
app.add_typer(devices.devices_app, name="devices")
app.add_typer(parking.parking_app, name="parking")
app.add_typer(profiles.profiles_app, name="profiles")
app.add_typer(rules.rules_app, name="rules")
app.add_typer(tokens.tokens_app, name="tokens")
