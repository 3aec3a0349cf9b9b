"""Bearer-token authentication for the operator API (FastAPI security dependencies, so the
OpenAPI schema declares the scheme on every route that needs it).

``TokenGuard(conninfo)`` is the ``Guard`` the components' routers are given:
``guard(Scope.OPERATE)`` is a dependency that answers 401 without a valid token, 403 with a
token of too small a scope, and otherwise hands the route the token's ``Principal``. Each
request looks its token up (one indexed query), so a revocation takes effect at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import psycopg
from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.access import Principal, Scope
from ingest import tokens

SCHEME = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="an API token: `cityflux tokens create --name N --scope read|operate|admin`",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(SCHEME)]
_REALM = 'Bearer realm="cityflux"'


class TokenGuard:
    """Admits requests whose bearer token holds a scope (see the module docstring)."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo

    def __call__(self, scope: Scope) -> Callable[[Credentials], Principal]:
        """The dependency for routes that need ``scope``."""

        def require(credentials: Credentials) -> Principal:
            if credentials is None:
                raise HTTPException(
                    401,
                    "this route needs a bearer token (Authorization: Bearer <token>)",
                    headers={"WWW-Authenticate": _REALM},
                )
            who = None
            if tokens.well_formed(credentials.credentials):  # garbage costs no connection
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    who = tokens.authenticate(conn, credentials.credentials)
            if who is None or who.scope is None:
                raise HTTPException(
                    401,
                    "the token is unknown or revoked",
                    headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
                )
            if not who.scope.covers(scope):
                raise HTTPException(
                    403,
                    f"token {who.name!r} has scope {who.scope.value!r}; "
                    f"this route needs {scope.value!r}",
                    headers={
                        "WWW-Authenticate": (
                            f'{_REALM}, error="insufficient_scope", scope="{scope.value}"'
                        )
                    },
                )
            return who

        require.__name__ = f"require_{scope.value}"
        return require
