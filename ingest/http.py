"""Operator HTTP endpoint (FastAPI): /metrics, /healthz, /readyz and the registry API, served
inside the service loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from core.metrics import Metrics
from device_registry.api import registry_router


@dataclass(frozen=True)
class AlertsApi:
    """What the alerts routes need from the running engine."""

    rules: Callable[[], list[dict[str, Any]]]
    on_ack: Callable[[], None]


def create_app(
    metrics: Metrics,
    ready: Callable[[], dict[str, bool]],
    conninfo: str | None = None,
    alerts: AlertsApi | None = None,
) -> FastAPI:
    """The operator API; ``ready`` reports each dependency's state for /readyz; with a
    database, the registry routes under /api/v1 (and the alerts routes with an engine)."""
    app = FastAPI(
        title="cityflux", description="Smart-city device ingest: operator API", version="0.1.0"
    )
    if conninfo:
        app.state.registry_conninfo = conninfo
        app.include_router(registry_router())
        if alerts is not None:
            from alerts.api import alerts_router

            app.include_router(alerts_router(alerts.rules, alerts.on_ack))

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def get_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness: the process serves requests")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: broker and database connected, not draining")
    def readyz(response: Response) -> dict[str, object]:
        checks = ready()
        ok = all(checks.values())
        response.status_code = 200 if ok else 503
        return {"status": "ready" if ok else "not ready", "checks": checks}

    return app
