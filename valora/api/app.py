"""The ASGI app: routes, problem+json for every error, request metrics, health, and `valora api`.

Trust boundary: the only caller input trusted is a live API key, and from it only its
organization and scopes. Everything else (paths, queries, bodies, an `organization` in an
event) is input to validate; another organization's id answers exactly as a missing one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from invoicing.db import DatabaseUnavailable
from invoicing.operations.keys import Unauthenticated
from schemas.errors import InvalidParameter, ResourceNotFound
from valora.api import routes_billing, routes_catalog
from valora.api.deps import ApiContext
from valora.api.docs import openapi_document
from valora.api.metrics import ApiMetrics, MetricsMiddleware
from valora.problems import InternalError, MethodNotAllowed, problem

log = logging.getLogger("valora.api")
PROBLEM_JSON = "application/problem+json"


def _problem_response(exc: BaseException, *, detail: str | None = None) -> JSONResponse:
    body = problem(exc, detail=detail)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    return JSONResponse(body, status_code=int(str(body["status"])), media_type=PROBLEM_JSON, headers=headers)


def _validation_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in err.get("loc", ())]
    field = ".".join(loc[1:] if loc and loc[0] in ("query", "path", "header", "body") else loc) or "request"
    return _problem_response(InvalidParameter(field, str(err.get("msg", "invalid")).removeprefix("Value error, ")))


def _http_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _problem_response(MethodNotAllowed("this method is not allowed on this route"))
    if exc.status_code == 404:
        return _problem_response(ResourceNotFound("no such route"))
    return JSONResponse(
        {"type": "about:blank", "title": str(exc.detail), "status": exc.status_code, "detail": str(exc.detail),
         "code": "http_error"},
        status_code=exc.status_code,
        media_type=PROBLEM_JSON,
    )


def _known_problem(_: Request, exc: Exception) -> JSONResponse:
    return _problem_response(exc)


def _database_problem(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return _problem_response(DatabaseUnavailable("the database does not answer; retry shortly"))


def _internal_problem(_: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error", exc_info=exc)
    return _problem_response(InternalError("internal error"), detail="internal error (logged on the server)")


def create_app(ctx: ApiContext, registry: CollectorRegistry | None = None) -> FastAPI:
    """The app for one process; `ctx` carries the engine, producer and clock (tests inject theirs)."""
    from schemas.errors import ValoraError

    registry = registry or CollectorRegistry()
    app = FastAPI(
        title="Valora API",
        version="1",
        description="Organization-scoped usage ingestion, usage, invoices and catalog. Authenticate with "
        "`Authorization: Bearer vk_…` (`valora keys create`). Errors are RFC 9457 problem+json with a stable `code`.",
        redoc_url=None,
    )
    app.state.valora = ctx
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(HTTPException, _http_problem)
    app.add_exception_handler(ValoraError, _known_problem)
    app.add_exception_handler(OperationalError, _database_problem)
    app.add_exception_handler(Exception, _internal_problem)
    _add_health(app, ctx, registry)
    app.state.routers = (routes_billing.router, routes_catalog.router)
    for router in app.state.routers:
        app.include_router(router)
    app.add_middleware(MetricsMiddleware, metrics=ApiMetrics(registry))
    return app


def _add_health(app: FastAPI, ctx: ApiContext, registry: CollectorRegistry) -> None:
    @app.get("/healthz", include_in_schema=True, summary="The process answers", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The database and the broker answer", tags=["health"])
    def readyz() -> Response:
        checks = ctx.ready()
        status = 200 if all(checks.values()) else 503
        return JSONResponse({"status": "ready" if status == 200 else "not ready", **checks}, status_code=status)

    @app.get("/metrics", summary="Prometheus metrics", tags=["health"], response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def readiness(engine: Any, bootstrap: str | None) -> Callable[[], dict[str, bool]]:
    """A `ready()` probing Postgres (SELECT 1) and the broker (cluster metadata), each briefly."""
    from valora.service_probes import broker_answers

    def ready() -> dict[str, bool]:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            database = True
        except OperationalError:
            database = False
        broker = bool(bootstrap) and broker_answers(str(bootstrap), timeout_s=1.0)
        return {"database": database, "broker": broker}

    return ready


def utc_now() -> datetime:
    return datetime.now(UTC)
