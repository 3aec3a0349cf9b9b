"""Operator HTTP API for alerts (FastAPI router): list, show, acknowledge; rules loaded.

Like the registry routes, endpoints are plain functions run in FastAPI's thread pool, each on
a short-lived connection, so a slow query never blocks the ingest loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alerts import store
from core.access import Guard, Principal, Scope


class AlertState(StrEnum):
    """Which alerts to list."""

    OPEN = "open"
    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


class Acknowledgement(BaseModel):
    """Body of POST /alerts/{id}/ack: an optional note. Who acknowledges is the token's name,
    never the body's word (a ``by`` field is refused with 422 rather than ignored)."""

    model_config = ConfigDict(extra="forbid")

    note: Annotated[str | None, Field(max_length=2000)] = None

    @field_validator("note")
    @classmethod
    def _storable(cls, v: str | None) -> str | None:
        # PostgreSQL text holds neither NUL nor a lone surrogate (JSON can carry both)
        if v is not None and ("\x00" in v or _unencodable(v)):
            raise ValueError("a note holds no NUL character and no lone surrogate")
        return v


def _unencodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _connect(request: Request) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(request.app.state.registry_conninfo, autocommit=True) as conn:
        yield conn


Conn = Annotated[psycopg.Connection[Any], Depends(_connect)]
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1, description="alert id")]


def alerts_router(
    guard: Guard,
    rules: Callable[[], list[dict[str, Any]]],
    on_ack: Callable[[], None] | None = None,
) -> APIRouter:
    """``/api/v1/alerts`` and ``/api/v1/rules``; ``rules`` lists the loaded rules; ``guard``
    admits a request holding a scope (reads need ``read``, acknowledging ``operate``)."""
    router = APIRouter(prefix="/api/v1", tags=["alerts"])
    read = [Depends(guard(Scope.READ))]
    # a default, not an annotation: annotations are strings here and cannot name locals
    operator = Depends(guard(Scope.OPERATE))

    @router.get("/alerts", summary="Alerts, newest first (keyset pages by id)", dependencies=read)
    def list_alerts(
        db: Conn,
        state: AlertState = AlertState.OPEN,
        rule: str | None = None,
        severity: str | None = None,
        subject: str | None = None,
        before: Annotated[
            int | None, Query(ge=1, le=2**63 - 1, description="page before this id")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        rows = store.list_alerts(
            db,
            state=state.value,
            rule=rule,
            severity=severity,
            subject=subject,
            before=before,
            limit=limit,
        )
        return {"alerts": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None}

    @router.get(
        "/alerts/summary", summary="Open alerts per rule, severity and state", dependencies=read
    )
    def summary(db: Conn) -> list[dict[str, Any]]:
        return store.counts(db)

    @router.get("/alerts/{alert_id}", summary="One alert with its event log", dependencies=read)
    def get_alert(db: Conn, alert_id: AlertId) -> dict[str, Any]:
        row = store.get_alert(db, alert_id)
        if row is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return row

    @router.post("/alerts/{alert_id}/ack", summary="Acknowledge a raised alert as the token's name")
    def acknowledge(  # the token first: nothing touches the database before it is checked
        who: Principal = operator,
        *,
        db: Conn,
        alert_id: AlertId,
        ack: Acknowledgement | None = None,
    ) -> dict[str, Any]:
        try:
            row = store.acknowledge(db, alert_id, who, ack.note if ack else None)
        except store.AckError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        if on_ack is not None:
            on_ack()
        return row

    @router.get("/rules", summary="The alert rules loaded", dependencies=read)
    def list_rules() -> list[dict[str, Any]]:
        return rules()

    return router
