"""What every dialect shares: reading bodies within limits, finding the runtime, and the
one table that turns a domain exception into a status code and headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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
