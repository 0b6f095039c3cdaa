"""What every dialect shares: reading bodies within limits, finding the runtime, and the
one table that turns a domain exception into a status code and headers."""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    ErrorgraphError,
    Forbidden,
    InvalidInput,
    InvalidKey,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Unavailable,
)
from app.services.runtime import Runtime

STATUS_BY_ERROR: dict[type[ErrorgraphError], int] = {
    InvalidKey: 401,
    Forbidden: 403,
    NotFound: 404,
    PayloadTooLarge: 413,
    InvalidInput: 400,
    QuotaExceeded: 429,
    Unavailable: 503,
}


class JSONOut(JSONResponse):
    """JSON rendered with orjson (fast, and it refuses NaN rather than emitting bad JSON)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def status_for(exc: ErrorgraphError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return 400


def headers_for(exc: ErrorgraphError) -> dict[str, str]:
    if isinstance(exc, QuotaExceeded | Unavailable):
        return {"Retry-After": str(exc.retry_after)}
    return {}


def error_response(
    exc: ErrorgraphError, body: Callable[[ErrorgraphError], Any] | None = None
) -> Response:
    """The answer to a domain error; `body` lets a dialect keep its documented shape."""
    content = body(exc) if body else {"detail": exc.message}
    return JSONOut(content, status_code=status_for(exc), headers=headers_for(exc))


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise InvalidInput("request body is empty; expected JSON", field="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", field="body") from None


def validation_details(
    exc: ValidationError, *, prefix: tuple[str | int, ...] = ()
) -> list[dict[str, Any]]:
    """Pydantic errors as FastAPI-style `detail` items: where, what, and the error type."""
    return [
        {"type": error["type"], "loc": [*prefix, *error["loc"]], "msg": error["msg"]}
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


# --- Shared by the dialects that take form and query parameters (Retack, ErrorStack) ---

MAX_FORM_FIELDS = 200


def decode_urlencoded(raw: bytes | str, *, where: str) -> list[tuple[str, str]]:
    """The pairs of an `application/x-www-form-urlencoded` text, as strict UTF-8.

    Starlette's own parsing turns bytes that are not UTF-8 into replacement characters;
    a dialect must refuse them (400) rather than store text the client never sent.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return urllib.parse.parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError:
        raise InvalidInput(f"the {where} is not valid UTF-8", field=where) from None
    except ValueError:
        raise InvalidInput(
            f"the {where} has more than {MAX_FORM_FIELDS} fields", field=where
        ) from None


def query_pairs(request: Request) -> list[tuple[str, str]]:
    """The query string's pairs, refusing what is not UTF-8 (see `decode_urlencoded`)."""
    raw: bytes = request.scope.get("query_string", b"")
    return decode_urlencoded(raw, where="query string")


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters (`charset`, `boundary`)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def multipart_pairs(request: Request, body: bytes) -> list[tuple[str, str]]:
    """The text fields of a `multipart/form-data` body that was already read (and so
    size-checked) with `read_body`; files are refused, since no dialect takes any."""

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(
            max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=len(body) + 1
        )
    except MultiPartException as exc:
        raise InvalidInput(f"could not read the form body: {exc.message}", field="body") from None
    except HTTPException as exc:
        raise InvalidInput(f"could not read the form body: {exc.detail}", field="body") from None
    try:
        return [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
    finally:
        await form.close()


def _plain_options(
    app: ASGIApp, methods: frozenset[str]
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """Answer an OPTIONS that is not a CORS preflight with the allowed methods, so that
    it never reaches an endpoint that would take it for a submission."""
    allow = ", ".join(sorted(methods | {"OPTIONS"}))

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            await Response(status_code=204, headers={"Allow": allow})(scope, receive, send)
            return
        await app(scope, receive, send)

    return dispatch


def browser_route(path: str, endpoint: Callable[..., Any], *, methods: list[str]) -> Route:
    """A route that web pages on any origin may call.

    CORS is answered per route rather than for the whole app: only the ingestion
    endpoints that browsers post to are open to every origin, while the management and
    GraphQL APIs keep the browser's same-origin protection. No credentials are allowed
    (keys travel in headers, bodies or query strings, never in cookies), so `*` is safe.
    """
    allowed = frozenset(method.upper() for method in methods)
    if "GET" in allowed:
        allowed |= {"HEAD"}
    app = CORSMiddleware(
        _plain_options(request_response(endpoint), allowed),
        allow_origins=["*"],
        allow_methods=sorted(allowed),
        allow_headers=["*"],
        max_age=86_400,
    )
    return Route(path, app, methods=[*sorted(allowed), "OPTIONS"])
