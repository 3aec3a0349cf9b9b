"""Operator HTTP API for alerts (FastAPI router): list, show, acknowledge; rules loaded.

Like the registry routes, endpoints are plain functions run in FastAPI's thread pool, each on
a short-lived connection, so a slow query never blocks the ingest loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from alerts import store


class AlertState(StrEnum):
    """Which alerts to list."""

    OPEN = "open"
    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


class Acknowledgement(BaseModel):
    """Body of POST /alerts/{id}/ack."""

    by: Annotated[str, Field(min_length=1, max_length=128, description="who acknowledges")]
    note: Annotated[str | None, Field(max_length=2000)] = None


def _connect(request: Request) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(request.app.state.registry_conninfo, autocommit=True) as conn:
        yield conn


Conn = Annotated[psycopg.Connection[Any], Depends(_connect)]


def alerts_router(
    rules: Callable[[], list[dict[str, Any]]], on_ack: Callable[[], None] | None = None
) -> APIRouter:
    """``/api/v1/alerts`` and ``/api/v1/rules``; ``rules`` lists the loaded rules."""
    router = APIRouter(prefix="/api/v1", tags=["alerts"])

    @router.get("/alerts", summary="Alerts, newest first (keyset pages by id)")
    def list_alerts(
        db: Conn,
        state: AlertState = AlertState.OPEN,
        rule: str | None = None,
        severity: str | None = None,
        subject: str | None = None,
        before: Annotated[int | None, Query(ge=1, description="page before this id")] = None,
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

    @router.get("/alerts/summary", summary="Open alerts per rule, severity and state")
    def summary(db: Conn) -> list[dict[str, Any]]:
        return store.counts(db)

    @router.get("/alerts/{alert_id}", summary="One alert with its event log")
    def get_alert(db: Conn, alert_id: int) -> dict[str, Any]:
        row = store.get_alert(db, alert_id)
        if row is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return row

    @router.post("/alerts/{alert_id}/ack", summary="Acknowledge a raised alert")
    def acknowledge(db: Conn, alert_id: int, ack: Acknowledgement) -> dict[str, Any]:
        try:
            row = store.acknowledge(db, alert_id, ack.by, ack.note)
        except store.AckError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        if on_ack is not None:
            on_ack()
        return row

    @router.get("/rules", summary="The alert rules loaded")
    def list_rules() -> list[dict[str, Any]]:
        return rules()

    return router
