"""Operator HTTP API for the registry (FastAPI router, OpenAPI at /openapi.json).

Endpoints are plain functions: FastAPI runs them in its thread pool, each on a short-lived
connection, so a slow registry query never blocks the ingest event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from core.access import Guard, Principal, Scope
from device_registry import lwm2m, store


class DeviceState(StrEnum):
    """Administrative status of a device."""

    ACTIVE = "active"
    DISABLED = "disabled"


class StatusChange(BaseModel):
    """Body of PATCH /devices/{id}: the status, and nothing else (a field the API would not
    change is refused with 422 rather than silently ignored)."""

    model_config = ConfigDict(extra="forbid")

    status: DeviceState


class FramesWindow(BaseModel):
    """A device's numbered frames over a window (frame loss, docs/design/0011-frame-loss.md)."""

    received: int = Field(description="numbered frames received (duplicates not counted)")
    missing: int = Field(description="frame numbers never received (late arrivals taken off)")
    loss_ratio: float | None = Field(
        description="missing / (received + missing); null when the device sent no numbered "
        "frame (formats without frame numbers)"
    )


class DeviceDetail(BaseModel):
    """One device: its registry fields, online status, and its frame loss over 24 h."""

    model_config = ConfigDict(extra="allow")

    id: int
    external_id: str
    frames_24h: FramesWindow = Field(
        description="the last 24 hourly counts (this hour and the 23 before it)"
    )


class NewCommand(BaseModel):
    """Body of POST /devices/{id}/commands: an LwM2M Write or Execute for the device."""

    model_config = ConfigDict(extra="forbid")

    operation: lwm2m.Operation
    path: Annotated[str, Field(pattern=lwm2m.PATH.pattern, description="/object/instance/resource")]
    value: Annotated[str | None, Field(max_length=lwm2m.MAX_VALUE_CHARS)] = None


def _connect(request: Request) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(request.app.state.registry_conninfo, autocommit=True) as conn:
        yield conn


Conn = Annotated[psycopg.Connection[Any], Depends(_connect)]


def registry_router(guard: Guard) -> APIRouter:
    """The ``/api/v1`` routes: devices, profiles, online status. The app names the database
    in ``app.state.registry_conninfo``; ``guard`` admits a request holding a scope (reads
    need ``read``, enabling or disabling a device ``operate``)."""
    router = APIRouter(prefix="/api/v1", tags=["registry"])
    read = [Depends(guard(Scope.READ))]
    # a default, not an annotation: annotations are strings here and cannot name locals
    operator = Depends(guard(Scope.OPERATE))

    @router.get(
        "/devices", summary="Devices in internal-id order (keyset pages)", dependencies=read
    )
    def devices(
        db: Conn,
        offline: Annotated[bool | None, Query(description="true: offline only")] = None,
        profile: str | None = None,
        status: DeviceState | None = None,
        after: Annotated[
            int, Query(ge=0, le=2**63 - 1, description="page after this internal id")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> dict[str, Any]:
        rows = store.list_devices(
            db,
            offline=offline,
            profile=profile,
            status=status.value if status else None,
            after_id=after,
            limit=limit,
        )
        return {"devices": rows, "next_after": rows[-1]["id"] if len(rows) == limit else None}

    @router.get(
        "/devices/{device}",
        summary="One device (external id, or #<internal id>)",
        dependencies=read,
        response_model=DeviceDetail,
    )
    def device(db: Conn, device: str) -> dict[str, Any]:
        row = store.get_device(db, device)
        if row is None:
            raise HTTPException(404, f"no device {device!r}")
        return row

    @router.patch("/devices/{device}", summary="Enable or disable a device (audited)")
    def patch_device(
        db: Conn, device: str, change: StatusChange, who: Principal = operator
    ) -> dict[str, Any]:
        row = store.set_status(db, device, change.status.value, who)
        if row is None:
            raise HTTPException(404, f"no device {device!r}")
        return row

    @router.post(
        "/devices/{device}/commands",
        status_code=201,
        summary="Queue an LwM2M Write or Execute (sent on the device's next Register/Update)",
    )
    def queue_command(
        db: Conn, device: str, command: NewCommand, who: Principal = operator
    ) -> dict[str, Any]:
        try:
            row = lwm2m.queue_command(
                db, device, command.operation, command.path, command.value, who
            )
        except lwm2m.CommandError as exc:
            raise HTTPException(422, str(exc)) from None
        if row is None:
            raise HTTPException(404, f"no device {device!r}")
        return row

    @router.get(
        "/devices/{device}/commands/{command_id}",
        summary="A queued command: its state and the device's answer",
        dependencies=read,
    )
    def command(
        db: Conn, device: str, command_id: Annotated[int, Path(ge=1, le=2**63 - 1)]
    ) -> dict[str, Any]:
        row = lwm2m.get_command(db, device, command_id)
        if row is None:
            raise HTTPException(404, f"no command {command_id} of device {device!r}")
        return row

    @router.get("/profiles", summary="Device profiles with device counts", dependencies=read)
    def profiles(db: Conn) -> list[dict[str, Any]]:
        return store.list_profiles(db)

    @router.get("/status", summary="Online/offline counts per profile", dependencies=read)
    def status_summary(db: Conn) -> list[dict[str, Any]]:
        return store.status_summary(db)

    return router
