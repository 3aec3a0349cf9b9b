"""The operator API checks a request's token before it touches the database: a request
without a valid token, however many, opens no PostgreSQL connection (a flood of them could
otherwise take the server's connection slots from the ingest path)."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alerts.api import alerts_router
from device_registry.api import registry_router
from ingest import problems
from ingest.admin_api import admin_router
from ingest.auth import TokenGuard

# (method, path, body) of every /api/v1 route the app serves, read from its OpenAPI schema so
# that a route added later is covered too; any body (the token is checked before it)
BODY = {"status": "disabled", "note": "x", "name": "eve", "scope": "admin"}


def _app() -> FastAPI:
    app = FastAPI()
    problems.install(app)
    app.state.registry_conninfo = "postgresql://routes"
    guard = TokenGuard("postgresql://guard")
    app.include_router(registry_router(guard))
    app.include_router(alerts_router(guard, list))
    app.include_router(admin_router(guard))
    return app


ROUTES = sorted(
    (method.upper(), re.sub(r"\{[^}]+\}", "1", path), BODY if method != "get" else None)
    for path, ops in _app().openapi()["paths"].items()
    for method in ops
    if path.startswith("/api/v1/")
)


def test_the_routes_cover_every_kind_of_api_route() -> None:
    assert len(ROUTES) >= 15
    assert {m for m, _, _ in ROUTES} == {"GET", "POST", "PATCH", "DELETE"}


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> tuple[TestClient, list[str]]:
    opened: list[str] = []

    def connect(conninfo: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(conninfo)
        raise psycopg.OperationalError("no database in this test")

    monkeypatch.setattr(psycopg, "connect", connect)
    return TestClient(_app(), raise_server_exceptions=False), opened


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("token", [None, "let-me-in", "cfx_short_x", "cfx_AAAAAAAA_" + "A" * 42])
def test_a_request_without_a_well_formed_token_is_refused_before_any_connection(
    client: tuple[TestClient, list[str]], method: str, path: str, body: Any, token: str | None
) -> None:
    http, opened = client
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    resp = http.request(method, path, json=body, headers=headers)
    assert resp.status_code == 401, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert opened == []


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_a_well_formed_token_is_looked_up_before_the_route_opens_its_connection(
    client: tuple[TestClient, list[str]], method: str, path: str, body: Any
) -> None:
    http, opened = client
    token = "cfx_AAAAAAAA_" + "A" * 43
    resp = http.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert opened == ["postgresql://guard"]  # the guard's look-up failed: the route never ran
    # a database that cannot be reached is a problem body too, and says to try again
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["retry-after"] == "5"
    assert resp.json()["detail"] == "the database is unavailable; try again"
