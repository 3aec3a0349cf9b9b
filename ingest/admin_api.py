"""Operator API routes that need ``admin``: tokens (list, create, revoke) and the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from core.access import Guard, Principal, Scope
from ingest import tokens
from storage import audit


class NewToken(BaseModel):
    """Body of POST /tokens."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=tokens.NAME_PATTERN, description="who the token is")]
    scope: Scope


def _connect(request: Request) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(request.app.state.registry_conninfo, autocommit=True) as conn:
        yield conn


Conn = Annotated[psycopg.Connection[Any], Depends(_connect)]
Text = Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]*$")]


def admin_router(guard: Guard) -> APIRouter:
    """``/api/v1/tokens`` and ``/api/v1/audit``, for ``admin`` tokens."""
    router = APIRouter(prefix="/api/v1", tags=["admin"])
    # a default, not an annotation: annotations are strings here and cannot name locals
    admin = Depends(guard(Scope.ADMIN))

    @router.get("/tokens", summary="API tokens (never their secrets)")
    def list_tokens(_who: Principal = admin, *, db: Conn) -> list[dict[str, Any]]:
        return tokens.list_tokens(db)

    @router.post("/tokens", status_code=201, summary="Create a token; it is shown only here")
    def create_token(who: Principal = admin, *, db: Conn, new: NewToken) -> dict[str, Any]:
        try:
            secret, row = tokens.create(db, new.name, new.scope, who)
        except tokens.TokenError as exc:
            raise HTTPException(409, str(exc)) from None
        return {**row, "token": secret}

    @router.delete("/tokens/{name}", summary="Revoke a token (effective at once)")
    def revoke_token(who: Principal = admin, *, db: Conn, name: str) -> dict[str, Any]:
        try:
            return tokens.revoke(db, name, who)
        except tokens.TokenError as exc:
            raise HTTPException(404, str(exc)) from None

    @router.get("/audit", summary="State changes, newest first (keyset pages by id)")
    def audit_log(
        _who: Principal = admin,
        *,
        db: Conn,
        action: Text = None,
        actor: Text = None,
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        rows = audit.list_entries(db, action=action, actor=actor, before_id=before, limit=limit)
        return {"entries": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None}

    return router
