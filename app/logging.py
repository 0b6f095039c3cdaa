"""Logs: one line per request, JSON for machines and plain text for people.

Everything is logged through the standard `logging` module (ours, uvicorn's, the
libraries'), and structlog's `ProcessorFormatter` renders each record: as one JSON object
per line when stderr is not a terminal (a container, a service manager, a file), and as
aligned, readable text on a terminal. `ERRORGRAPH_LOG_FORMAT=json|console` overrides the
guess. Fields given with `extra=` become keys of their own; so does the id of the request
being answered, which is bound for the duration of the request.

`RequestLogMiddleware` writes the request line (logger `errorgraph.access`, level info):
method, path (never the query string, which may carry a key), route template, status,
duration in milliseconds, the dialect of the route when it belongs to one, the client
address and the request id. The id is the client's `X-Request-ID` when it is a sane
token, else a new one, and it is sent back in `X-Request-ID`. The same middleware counts
the request in `app.metrics`. uvicorn's own access log is switched off by `errorgraph
serve`, which configures logging with `logging_config` in every worker process.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple, TextIO

import structlog
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics

LogFormat = Literal["auto", "json", "console"]

access_log = logging.getLogger("errorgraph.access")

REQUEST_ID_HEADER = "X-Request-ID"
# Ids we take from clients: what tracing systems and proxies send (UUIDs, hex, base64),
# short enough for a log line, and nothing that could forge another field or line.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")


def wants_json(stream: TextIO, log_format: LogFormat = "auto") -> bool:
    if log_format != "auto":
        return log_format == "json"
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def _without_uvicorn_colors(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    # uvicorn repeats its message with terminal colour codes in `extra`.
    event.pop("color_message", None)
    return event


def build_formatter(*, json: bool, colors: bool = False) -> structlog.stdlib.ProcessorFormatter:
    """The formatter for every record: JSON lines, or text for a person to read."""
    pre_chain: list[Any] = [
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.ExtraAdder(),
        _without_uvicorn_colors,
    ]
    renderer: list[Any]
    if json:
        renderer = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        renderer = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=colors),
        ]
    return structlog.stdlib.ProcessorFormatter(processors=renderer, foreign_pre_chain=pre_chain)


def formatter_for_stderr(log_format: LogFormat = "auto") -> structlog.stdlib.ProcessorFormatter:
    """The formatter `logging_config` names: decided in the process that logs, since each
    uvicorn worker configures its own logging."""
    as_json = wants_json(sys.stderr, log_format)
    colors = not as_json and log_format == "auto"
    return build_formatter(json=as_json, colors=colors)


def logging_config(*, level: str, log_format: LogFormat = "auto") -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary (what uvicorn's `log_config` takes): every
    logger through one stderr handler with our formatter, uvicorn's access log off."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "errorgraph": {"()": f"{__name__}.formatter_for_stderr", "log_format": log_format}
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "errorgraph",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            # uvicorn's loggers keep no handlers of their own and go through the root's.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }


class DialectRoute(NamedTuple):
    """The dialect a route belongs to, and whether clients submit events there."""

    dialect: str
    submission: bool


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _CLIENT_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestLogMiddleware:
    """Logs and counts every HTTP request (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, dialects: Iterable[tuple[BaseRoute, DialectRoute]] = ()
    ) -> None:
        self.app = app
        # Routes compare by value and are unhashable; the app keeps them, so ids are stable.
        self._dialects = {id(route): dialect for route, dialect in dialects}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != header[0]
                ]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        started = time.perf_counter()
        with (
            structlog.contextvars.bound_contextvars(request_id=request_id),
            metrics.request_outcome() as outcome,
        ):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                # An exception before any answer becomes the framework's 500.
                seconds = time.perf_counter() - started
                self._finish(scope, request_id, status or 500, seconds, outcome)

    def _finish(
        self,
        scope: Scope,
        request_id: str,
        status: int,
        seconds: float,
        outcome: metrics.RequestOutcome,
    ) -> None:
        route = scope.get("route")
        template: str | None = getattr(route, "path", None)
        dialect = self._dialects.get(id(route)) if route is not None else None
        method: str = scope["method"]
        path: str = scope["path"]
        client = scope.get("client")
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": method,
            "path": path,
            "route": template,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "client": client[0] if client else None,
        }
        if dialect is not None:
            fields["dialect"] = dialect.dialect
        access_log.info("%s %s %d", method, path, status, extra=fields)
        metrics.observe_request(
            method=method,
            route=template,
            status=status,
            seconds=seconds,
            submission_dialect=dialect.dialect if dialect and dialect.submission else None,
            outcome=outcome,
        )
