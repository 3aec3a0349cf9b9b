"""``cityflux tokens``: the operator API's bearer tokens (create, list, revoke).

The command line talks to the database directly: whoever can run it against the registry
already holds the database's credentials, which is how the first ``admin`` token is made.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cityflux.common import ConfigOpt, cli_principal, print_rows, registry_conn
from core.access import Scope

tokens_app = typer.Typer(help="Operator API tokens: create, list, revoke.", no_args_is_help=True)


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option("--name", help="who or what uses the token")],
    scope: Annotated[Scope, typer.Option("--scope", help="read, operate or admin")],
    config: ConfigOpt = None,
) -> None:
    """Create a token and print it once (only its hash is kept)."""
    from ingest.tokens import TokenError, create

    with registry_conn(config) as conn:
        try:
            token, _row = create(conn, name, scope, cli_principal())
        except TokenError as exc:
            typer.echo(f"cityflux: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(token)
    typer.echo(
        f"token {name!r} ({scope.value}) created; it is not shown again: "
        "send it as Authorization: Bearer <token>",
        err=True,
    )


@tokens_app.command("list")
def tokens_list(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines")] = False,
) -> None:
    """Every token (name, prefix, scope, when made and last used, revoked), never a secret."""
    from ingest.tokens import list_tokens

    with registry_conn(config) as conn:
        rows = list_tokens(conn)
    cols = ["name", "prefix", "scope", "created_at", "created_by", "last_used_at", "revoked_at"]
    print_rows(rows, cols, as_json)


@tokens_app.command("revoke")
def tokens_revoke(
    name: Annotated[str, typer.Argument(help="the token's name")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a token; requests carrying it are refused at once."""
    from ingest.tokens import TokenError, revoke

    with registry_conn(config) as conn:
        try:
            revoke(conn, name, cli_principal())
        except TokenError as exc:
            typer.echo(f"cityflux: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"token {name!r} revoked")
