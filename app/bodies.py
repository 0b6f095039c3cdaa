"""A request's body, read within a limit: shared by the REST dialects and GraphQL, so
that no route reads more than it takes before it refuses."""

from __future__ import annotations

from starlette.requests import Request

from app.errors import PayloadTooLarge


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes `limit` bytes: from the
    declared `Content-Length` before a byte is read, so that such a request is never
    admitted (app/admission.py), or as the body arrives when it has none."""
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
