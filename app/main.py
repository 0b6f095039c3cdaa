"""The ASGI application: `create_app(settings)` for tests, `app` for `uvicorn app.main:app`."""

from __future__ import annotations

import hmac
import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute

import rest_compat
from app import metrics
from app.admission import AdmissionMiddleware, BodyBudget
from app.config import Settings, load_settings
from app.dashboard import dashboard_routes
from app.errors import ErrorgraphError, Forbidden
from app.graphql.context import bearer_secret
from app.graphql.schema import graphql_app
from app.logging import DialectRoute, RequestLogMiddleware
from app.memory import LargeBodyGarbage, return_large_blocks, tune_garbage_collector
from app.openapi import routes as openapi_routes
from app.services.cleanup import RetentionCleanup
from app.services.exports import export_chunks, export_filter, get_export_request
from app.services.keys import viewer_for_secret
from app.services.runtime import Runtime
from rest_compat import (
    airbrake,
    error_tracker,
    errorstack,
    infrai,
    proliferate,
    retack,
    sentry,
    sourcemaps,
)
from rest_compat.common import JSONOut, SubmissionRoute, error_response, runtime_of

log = logging.getLogger("errorgraph")


async def health(request: Request) -> Response:
    """Database reachable → 200 `{"status": "ok"}`; else 503 with the reason."""
    reason = await runtime_of(request).unready_reason()
    if reason is None:
        return JSONOut({"status": "ok"})
    return JSONOut({"status": "unavailable", "reason": reason}, status_code=503)


async def download_export(request: Request) -> Response:
    """Every row of an export made by the `exportEvents` mutation, streamed; needs a
    credential that can read what the export covers (`Authorization: Bearer …`)."""
    runtime = runtime_of(request)
    sessions = runtime.database.sessions
    viewer = await viewer_for_secret(sessions=sessions, secret=bearer_secret(request.headers))
    if not viewer.may("read"):
        raise Forbidden("this needs the 'read' scope")
    export = await get_export_request(sessions=sessions, export_id=request.path_params["export_id"])
    where = export_filter(export, viewer.project_ids)
    media = "text/csv; charset=utf-8" if export.format == "CSV" else "application/json"
    extension = "csv" if export.format == "CSV" else "json"

    async def body() -> AsyncIterator[bytes]:
        async for piece in export_chunks(sessions=sessions, where=where, format=export.format):  # type: ignore[arg-type]
            yield piece.encode()

    return StreamingResponse(
        body(),
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="errorgraph-{export.id}.{extension}"'
        },
    )


async def live(_request: Request) -> Response:
    """The process answers: for a supervisor deciding whether to restart it."""
    return JSONOut({"status": "ok"})


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition of this process (see app/metrics.py). Open like most
    exporters, unless ERRORGRAPH_METRICS_TOKEN is set: then `Authorization: Bearer <it>`."""
    runtime = runtime_of(request)
    token = runtime.settings.metrics_token
    if token is not None:
        given = (bearer_secret(request.headers) or "").encode()
        if not hmac.compare_digest(given, token.get_secret_value().encode()):
            return JSONOut(
                {"detail": "metrics need Authorization: Bearer <ERRORGRAPH_METRICS_TOKEN>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    body, content_type = metrics.render(
        writer=runtime.writer,
        pubsub=runtime.pubsub,
        admission=request.app.state.admission,
        accept=request.headers.get("accept"),
    )
    return Response(body, headers={"Content-Type": content_type})


def _dialect_routes() -> list[tuple[BaseRoute, DialectRoute]]:
    """Each route of a dialect module in rest_compat/, with the dialect (the module's name)
    and whether clients submit events there: the routes open to browsers, which
    `browser_route` gives to submissions only, and Infrai's ingest-scoped capabilities."""
    found: list[tuple[BaseRoute, DialectRoute]] = []
    for info in pkgutil.iter_modules(rest_compat.__path__):
        module = importlib.import_module(f"{rest_compat.__name__}.{info.name}")
        for route in getattr(module, "routes", ()):
            scope = getattr(getattr(route, "endpoint", None), "scope", None)
            submission = isinstance(route, SubmissionRoute) or scope == "ingest"
            found.append((route, DialectRoute(info.name, submission)))
    return found


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONOut({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _domain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ErrorgraphError)
    return error_response(exc)


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    """The client closed its connection before its body had arrived (a timeout, a process
    that exits): there is no one to answer and nothing went wrong here. 499, as nginx logs
    it, so that the request log and the metrics tell these from the server's errors."""
    return Response(status_code=499)


async def _unexpected(_request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc)
    return JSONOut({"detail": "internal server error"}, status_code=500)


def create_app(
    settings: Settings | None = None, *, runtime_options: dict[str, Any] | None = None
) -> Starlette:
    """Build the app; the database is upgraded and the writer started in the lifespan."""
    settings = settings or load_settings()
    options = runtime_options or {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings, **options)
        app.state.runtime = runtime
        if settings.gc_freeze:
            tune_garbage_collector()
            return_large_blocks()
        # Retention cleanup: every process ticks, one of the deployment runs it.
        cleanup = None
        if settings.retention_enabled:
            cleanup = RetentionCleanup(
                database=runtime.database, settings=settings, clock=options.get("clock")
            )
            await cleanup.start()
        app.state.retention_cleanup = cleanup
        try:
            yield
        finally:
            try:
                if cleanup is not None:
                    await cleanup.stop()
            finally:
                await runtime.stop()

    graphql = graphql_app(settings)
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/export/{export_id}", download_export, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/health/ready", health, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/metrics", prometheus_metrics, methods=["GET"]),
        *proliferate.routes,
        *retack.routes,
        *errorstack.routes,
        *sentry.routes,
        *error_tracker.routes,
        *infrai.routes,
        *airbrake.routes,
        *sourcemaps.routes,
        *openapi_routes,
        *dashboard_routes(settings),
    ]
    limit = settings.max_body_bytes_in_flight
    admission = BodyBudget(limit) if limit > 0 else None
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(RequestLogMiddleware, dialects=_dialect_routes()),
            Middleware(
                AdmissionMiddleware,
                budget=admission,
                min_rate=settings.body_min_bytes_per_second,
                grace=settings.body_grace_seconds,
                garbage=LargeBodyGarbage() if settings.gc_freeze else None,
            ),
        ],
        exception_handlers={
            HTTPException: _http_error,
            ErrorgraphError: _domain_error,
            ClientDisconnect: _client_gone,
            Exception: _unexpected,
        },
    )
    app.state.admission = admission
    return app


def __getattr__(name: str) -> Starlette:
    # `uvicorn app.main:app` asks for `app`: build it then, so importing this module never
    # reads the environment.
    if name == "app":
        return create_app()
    raise AttributeError(name)
