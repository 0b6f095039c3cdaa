"""A request's body, read within a limit: shared by the REST dialects and GraphQL, so
that no route reads more than it takes before it refuses."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Scope

from app.errors import PayloadTooLarge


def declared_length(scope: Scope) -> int | None:
    """The body's size as its `Content-Length` declares it; None without a usable one.
    Read off the ASGI scope, so that the admission middleware, which has no request
    object, reads it the same way."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def refuse_declared_over(request: Request, limit: int) -> None:
    """413 for a body that declares more than `limit` bytes, before a byte is read, so
    that such a request is never admitted (app/admission.py)."""
    declared = declared_length(request.scope)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes `limit` bytes: from the
    declared `Content-Length`, or as the body arrives when it has none."""
    refuse_declared_over(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
