"""``cityflux devices``: import, export, list, show, credentials."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cityflux.common import ConfigOpt, cli_principal, print_rows, registry_conn, settings_of

devices_app = typer.Typer(help="Device registry: import, export, list, show.", no_args_is_help=True)


@devices_app.command("import")
def devices_import(
    file: Annotated[Path, typer.Argument(help="CSV (header row) or JSON Lines (.jsonl)")],
    config: ConfigOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Upsert devices from a file; invalid lines are reported and skipped (exit 1 if any)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from device_registry.importer import ImportFormatError, import_devices

    if not file.is_file():
        typer.echo(f"cityflux: {file}: no such file", err=True)
        raise typer.Exit(2)
    iterations = settings_of(config).registry.credential_iterations
    with registry_conn(config) as conn:
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=quiet,
            transient=True,
        )
        with progress:
            task = progress.add_task(f"reading {file.name}", total=file.stat().st_size)

            def step(done: int, total: int, what: str) -> None:
                progress.update(task, completed=done, total=total, description=what)

            try:
                result = import_devices(conn, file, step, cli_principal(), iterations)
            except ImportFormatError as exc:
                typer.echo(f"cityflux: {exc}", err=True)
                raise typer.Exit(2) from None
    for err in result.errors:
        typer.echo(f"{file}:{err.line}: {err.field}: {err.message}", err=True)
    typer.echo(
        f"{result.imported} devices imported ({result.inserted} new, {result.updated} updated, "
        f"{result.unchanged} unchanged, {result.duplicates} repeated lines superseded); "
        f"{len(result.errors)} invalid lines"
    )
    if result.errors:
        raise typer.Exit(1)


@devices_app.command("export")
def devices_export(
    file: Annotated[Path | None, typer.Argument(help="output CSV (default: stdout)")] = None,
    config: ConfigOpt = None,
    with_secrets: Annotated[
        bool,
        typer.Option(
            "--with-secrets",
            help="also the credential hashes, OSCORE and DTLS keys (credential_hash, "
            "oscore_secret, oscore_salt, psk_key), in a file only its owner can read: a "
            "registry that can be imported into an empty one",
        ),
    ] = False,
) -> None:
    """Every device as CSV in the import format."""
    from device_registry.store import export_csv

    with registry_conn(config) as conn:
        if file is None:
            export_csv(conn, sys.stdout.buffer, secrets=with_secrets)
            return
        if with_secrets:  # created owner-only: the file holds the devices' keys
            file.unlink(missing_ok=True)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                export_csv(conn, out, secrets=True)
        else:
            with file.open("wb") as out:
                export_csv(conn, out)


LIST_TABLE_ROWS = 100  # `devices list` shows this many in its table unless told otherwise
LIST_PAGE_ROWS = 10_000  # --json without --limit reads the registry this many at a time


@devices_app.command("list")
def devices_list(
    config: ConfigOpt = None,
    offline: Annotated[bool, typer.Option("--offline", help="only offline devices")] = False,
    online: Annotated[bool, typer.Option("--online", help="only online devices")] = False,
    profile: Annotated[str | None, typer.Option(help="only this profile")] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="at most this many (default: 100 in the table, all with --json)"),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="every matching device")] = False,
    after: Annotated[int, typer.Option(help="page after this internal id")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines")] = False,
) -> None:
    """Devices with their online status (the table shows 100 and says how many match)."""
    from device_registry.store import count_devices, list_devices

    if offline and online:
        typer.echo("cityflux: --offline and --online exclude each other", err=True)
        raise typer.Exit(2)
    if all_ and limit is not None:
        typer.echo("cityflux: --all and --limit exclude each other", err=True)
        raise typer.Exit(2)
    state = True if offline else (False if online else None)
    filters: dict[str, Any] = {"offline": state, "profile": profile}
    cols = ["id", "external_id", "profile", "kind", "status", "last_seen", "online"]
    with registry_conn(config) as conn:
        if limit is None and (all_ or as_json):  # everything, read a page at a time
            last = after
            while True:
                rows = list_devices(conn, **filters, after_id=last, limit=LIST_PAGE_ROWS)
                if as_json:
                    print_rows(rows, cols, as_json=True)
                elif rows or last == after:
                    print_rows(rows, cols, as_json=False, header=last == after)
                if len(rows) < LIST_PAGE_ROWS:
                    return
                last = int(rows[-1]["id"])
        shown = limit or LIST_TABLE_ROWS
        rows = list_devices(conn, **filters, after_id=after, limit=shown + 1)
        more = len(rows) > shown
        rows = rows[:shown]
        total = count_devices(conn, **filters, after_id=after) if more else len(rows)
    print_rows(rows, cols, as_json)
    if more and as_json:  # JSON pages are asked for explicitly: say where the next starts
        typer.echo(
            f"showing {len(rows):,} of {total:,}; next page: --after {rows[-1]['id']}", err=True
        )
    elif more:
        typer.echo(f"showing {len(rows):,} of {total:,}; --limit or --all")


@devices_app.command("show")
def devices_show(
    device: Annotated[str, typer.Argument(help="external id, or #<internal id>")],
    config: ConfigOpt = None,
) -> None:
    """One device as JSON."""
    from device_registry.store import get_device

    with registry_conn(config) as conn:
        row = get_device(conn, device)
    if row is None:
        typer.echo(f"cityflux: no device {device!r}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(row, indent=2, default=str))


@devices_app.command("credentials")
def devices_credentials(
    password_file: Annotated[Path, typer.Option("--password-file", help="Mosquitto passwd")],
    acl_file: Annotated[Path, typer.Option("--acl-file", help="Mosquitto ACL file")],
    certificates_file: Annotated[
        Path | None,
        typer.Option(
            "--certificates-file",
            help="also a CSV of the devices' certificate fingerprints (external_id, status, "
            "cert_fingerprint), to check against what the CA issued",
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Write Mosquitto's password and ACL files from the registry (reload it with SIGHUP).

    Devices with certificates connect to a listener with ``use_identity_as_username``: the
    ACL confines them by their certificate's common name, and denies every topic to those
    that are disabled."""
    from device_registry.credentials import export_mosquitto

    settings = settings_of(config)
    service = None
    if settings.mqtt.username and settings.mqtt.password:
        service = (settings.mqtt.username, settings.mqtt.password.get_secret_value())
    prefix = (
        settings.mqtt.topics[0].split("/up/")[0]
        if "/up/" in settings.mqtt.topics[0]
        else "cityflux"
    )
    with registry_conn(config) as conn:
        done = export_mosquitto(
            conn,
            password_file,
            acl_file,
            prefix,
            service,
            settings.registry.credential_iterations,
            certificates_file,
        )
    typer.echo(f"{done.devices} device credentials -> {password_file}; ACL -> {acl_file}")
    if done.denied_certificates:
        typer.echo(
            f"{done.denied_certificates} disabled devices holding a certificate: denied in the ACL"
        )
    if certificates_file is not None:
        typer.echo(f"{done.certificate_devices} certificate fingerprints -> {certificates_file}")


@devices_app.command("command")
def devices_command(
    device: Annotated[str, typer.Argument(help="external id, or #<internal id>")],
    operation: Annotated[str, typer.Argument(help="write or execute")],
    path: Annotated[str, typer.Argument(help="LwM2M resource, /object/instance/resource")],
    value: Annotated[str | None, typer.Argument(help="write: the value (text)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Queue an LwM2M Write or Execute; sent on the device's next Register or Update."""
    from device_registry import lwm2m

    try:
        op = lwm2m.Operation(operation)
    except ValueError:
        typer.echo(f"cityflux: operation {operation!r} is not write or execute", err=True)
        raise typer.Exit(2) from None
    try:
        lwm2m.check_command(op, path, value)  # before connecting: a typo is told at once
    except lwm2m.CommandError as exc:
        typer.echo(f"cityflux: {exc}", err=True)
        raise typer.Exit(2) from None
    with registry_conn(config) as conn:
        row = lwm2m.queue_command(conn, device, op, path, value, cli_principal())
    if row is None:
        typer.echo(f"cityflux: no device {device!r}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(row, default=str))
