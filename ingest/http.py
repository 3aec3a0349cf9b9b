"""Operator HTTP endpoint (FastAPI): /metrics, /healthz, /readyz and the operator API under
/api/v1 (registry, parking, alerts, tokens, audit), served inside the service loop.

Every /api/v1 route needs a bearer token of the right scope (ingest/auth.py); /healthz and
/readyz are open (orchestrators probe them); /metrics is open unless ``metrics_access`` is
``token`` (then a ``read`` token). Errors are RFC 9457 problem details (ingest/problems.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from alerts.api import alerts_router
from core.access import Scope
from core.metrics import Metrics
from device_registry.api import registry_router
from ingest import problems
from ingest.admin_api import admin_router
from ingest.auth import TokenGuard
from ingest.settings import MetricsAccess
from parking.api import parking_router


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
    metrics_access: MetricsAccess = MetricsAccess.OPEN,
    api: bool = True,
    parking_hold_s: float = 120.0,
) -> FastAPI:
    """The operator API; ``ready`` reports each dependency's state for /readyz; with a
    database and ``api``, the token-guarded routes under /api/v1 (the alerts routes with an
    engine); without ``api`` (workers other than 0) /metrics, /healthz and /readyz only."""
    app = FastAPI(
        title="cityflux", description="Smart-city device ingest: operator API", version="0.1.0"
    )
    problems.install(app)
    guard = None
    if conninfo:
        guard = TokenGuard(conninfo)
        app.state.registry_conninfo = conninfo
    if guard is not None and api:
        app.include_router(registry_router(guard))
        if alerts is not None:
            app.include_router(alerts_router(guard, alerts.rules, alerts.on_ack))
        app.include_router(parking_router(guard, parking_hold_s))
        app.include_router(admin_router(guard))
    if metrics_access is MetricsAccess.TOKEN and guard is None:
        raise ValueError("metrics_access = token needs the database (tokens live there)")
    scrape = [Depends(guard(Scope.READ))] if guard and metrics_access is MetricsAccess.TOKEN else []

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=scrape)
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
