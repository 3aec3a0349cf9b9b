"""Operator HTTP API for parking (FastAPI router): free spaces per lot, now.

A plain function like the registry's routes: FastAPI runs it in its thread pool on a short
connection (``app.state.registry_conninfo``), so the query never blocks the ingest loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from core.access import Guard, Scope
from parking import store


class LotNow(BaseModel):
    """One parking lot now."""

    lot: str
    name: str
    registered: bool
    """In ``parking_lots``; else named only by its sensors' ``lot`` (capacity = sensors)."""
    capacity: int
    sensors: int
    """Space sensors registered with this lot."""
    reporting: int
    """Sensors that have reported a state."""
    heard_24h: int
    """Sensors heard within 24 hours."""
    occupied: int
    free: int
    """capacity − occupied (never below 0)."""
    occupied_pct: float | None
    updated_at: str | None
    """The lot's latest applied report (ISO 8601), or null."""


def _connect(request: Request) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(request.app.state.registry_conninfo, autocommit=True) as conn:
        yield conn


Conn = Annotated[psycopg.Connection[Any], Depends(_connect)]


def parking_router(guard: Guard, hold_s: float) -> APIRouter:
    """``GET /api/v1/parking/lots`` (scope ``read``); ``hold_s`` is the debounce interval."""
    router = APIRouter(prefix="/api/v1/parking", tags=["parking"])
    read = [Depends(guard(Scope.READ))]

    @router.get(
        "/lots",
        summary="Parking lots: capacity, occupied and free spaces now",
        dependencies=read,
        response_model=list[LotNow],
    )
    def lots(db: Conn) -> list[dict[str, Any]]:
        return store.lots_now(db, hold_s)

    return router
