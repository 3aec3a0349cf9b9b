"""Error answers of the operator API as RFC 9457 problem details (``application/problem+json``).

Every error the API gives — 401, 403, 404, 409, 422, 503 — has the same shape: ``type``, ``title``,
``status``, ``detail``; a 422 adds ``errors`` (each invalid field, as pydantic names it).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """One problem-details answer."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    return problem(422, "the request is invalid", errors=jsonable_encoder(errors))


async def _data_error(_request: Request, exc: Exception) -> JSONResponse:
    # a value the database cannot hold (a NUL in a text parameter): the request's fault
    return problem(422, f"the database refused a request value: {type(exc).__name__}")


async def _database_down(_request: Request, exc: Exception) -> JSONResponse:
    # the registry cannot be reached (an outage, or no connection slot): not the request's
    # fault, and worth trying again; the reason is in the service's log, not the answer
    log.warning("operator API: the database is unavailable (%s)", exc)
    return problem(503, "the database is unavailable; try again", {"Retry-After": "5"})


def install(app: FastAPI) -> None:
    """Answer the app's errors as problem details."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(psycopg.DataError, _data_error)
    app.add_exception_handler(psycopg.OperationalError, _database_down)
