"""What every dialect shares: reading bodies within limits, finding the runtime, and the
one table that turns a domain exception into a status code and headers."""

from __future__ import annotations

import asyncio
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import brotli
import orjson
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.bodies import refuse_declared_over
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
from app.metrics import note_refusal
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
    """The status answering `exc`. Every REST answer to a domain error passes here, so it
    also tells the request's metrics why the request was refused."""
    note_refusal(type(exc))
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


async def limit_client(request: Request, *, dialect: str) -> None:
    """Count this request against its client address's limit for `dialect` (see
    `app.services.quotas`); QuotaExceeded past it. Every dialect endpoint calls it first,
    before reading the body or looking up a key."""
    quotas = runtime_of(request).quotas
    if quotas is not None:
        await quotas.check_client(dialect=dialect, address=client_ip(request))


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


class SubmissionRoute(Route):
    """A route where clients submit events: its refusals count as rejected events."""


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
    return SubmissionRoute(path, app, methods=[*sorted(allowed), "OPTIONS"])


# --- Compressed bodies, decoded as they stream in, within limits ----------------------

# The most one decoding step may produce: a small input chunk can expand a thousandfold,
# so output is taken in bounded pieces and counted before the next piece is made.
DECODE_PIECE = 256 * 1024
# Content-Encoding values that mean "not encoded". `utf-8` is there because some SDKs
# send it by mistake (a charset, not a coding); refusing it would drop their events.
_IDENTITY_CODINGS = frozenset({"", "identity", "utf-8", "utf8"})
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class _Identity:
    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def finish(self) -> Iterator[bytes]:
        return iter(())


class _ZlibPieces:
    """gzip, zlib or raw deflate (chosen by `wbits`), at most DECODE_PIECE per step."""

    def __init__(self, wbits: int, name: str) -> None:
        self._wbits = wbits
        self._name = name
        self._obj = zlib.decompressobj(wbits)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            if self._obj.eof:
                if not data:
                    return
                if self._wbits != _GZIP_WBITS:
                    raise InvalidInput(
                        f"the body has data after the end of its {self._name} stream",
                        field="Content-Encoding",
                    )
                # A gzip body may hold several members one after another (RFC 1952 §2.2).
                self._obj = zlib.decompressobj(self._wbits)
            piece = self._obj.decompress(data, DECODE_PIECE)
            if piece:
                yield piece
            if self._obj.eof:
                data = self._obj.unused_data
                continue
            data = self._obj.unconsumed_tail
            # A full piece may leave output inside zlib even when all input was taken.
            if not data and len(piece) < DECODE_PIECE:
                return

    def finish(self) -> Iterator[bytes]:
        yield from self.feed(b"")
        if not self._obj.eof:
            raise InvalidInput(f"the {self._name} body is truncated", field="Content-Encoding")


class _DeflatePieces:
    """HTTP `deflate` is meant to be zlib (RFC 9110 §8.4.1.2), but some clients send raw
    deflate: try zlib, and when it fails before producing anything, start again raw."""

    def __init__(self) -> None:
        self._inner = _ZlibPieces(zlib.MAX_WBITS, "deflate")
        # Input seen while still undecided; dropped at the first output.
        self._probe: bytearray | None = bytearray()

    def _raw(self) -> Iterator[bytes]:
        assert self._probe is not None
        seen, self._probe = bytes(self._probe), None
        self._inner = _ZlibPieces(-zlib.MAX_WBITS, "deflate")
        yield from self._inner.feed(seen)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._probe is None:
            yield from self._inner.feed(data)
            return
        self._probe += data
        try:
            for piece in self._inner.feed(data):
                self._probe = None
                yield piece
        except (zlib.error, InvalidInput):
            if self._probe is None:
                raise
            yield from self._raw()

    def finish(self) -> Iterator[bytes]:
        if self._probe is not None:
            try:
                pieces = list(self._inner.finish())  # nothing came out so far: small
            except (zlib.error, InvalidInput):
                yield from self._raw()
            else:
                yield from pieces
                return
        yield from self._inner.finish()


class _BrotliPieces:
    def __init__(self) -> None:
        self._obj = brotli.Decompressor()

    def _pending(self) -> Iterator[bytes]:
        while not self._obj.can_accept_more_data():
            piece = self._obj.process(b"", output_buffer_limit=DECODE_PIECE)
            if not piece:
                return
            yield piece

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        piece = self._obj.process(data, output_buffer_limit=DECODE_PIECE)
        if piece:
            yield piece
        yield from self._pending()

    def finish(self) -> Iterator[bytes]:
        # The decoder may hold output back even when it takes more input: drain it.
        while not self._obj.is_finished():
            piece = self._obj.process(b"", output_buffer_limit=DECODE_PIECE)
            if not piece:
                break
            yield piece
        if not self._obj.is_finished():
            raise InvalidInput("the br body is truncated", field="Content-Encoding")


_Pieces = _Identity | _ZlibPieces | _DeflatePieces | _BrotliPieces


def _decoder_for(coding: str) -> _Pieces:
    if coding in {"gzip", "x-gzip"}:
        return _ZlibPieces(_GZIP_WBITS, "gzip")
    if coding == "deflate":
        return _DeflatePieces()
    if coding == "br":
        return _BrotliPieces()
    raise InvalidInput(
        f"unsupported Content-Encoding {coding!r}; use gzip, deflate or br",
        field="Content-Encoding",
    )


class BodyDecoder:
    """Undoes a Content-Encoding (several codings are undone last first, RFC 9110 §8.4),
    in bounded pieces, so that a caller can count the output as it grows."""

    def __init__(self, content_encoding: str | None) -> None:
        codings = [part.strip().lower() for part in (content_encoding or "").split(",")]
        self.codings = [coding for coding in codings if coding not in _IDENTITY_CODINGS]
        self._stages: list[_Pieces] = [_decoder_for(c) for c in reversed(self.codings)]

    def _through(self, index: int, data: bytes) -> Iterator[bytes]:
        if index == len(self._stages):
            if data:
                yield data
            return
        for piece in self._stages[index].feed(data):
            yield from self._through(index + 1, piece)

    def _checked(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from pieces
        except (zlib.error, brotli.error) as exc:
            raise InvalidInput(
                f"the body is not valid {', '.join(self.codings)} data ({exc})",
                field="Content-Encoding",
            ) from None

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._checked(self._through(0, data))

    def finish(self) -> Iterator[bytes]:
        def stages() -> Iterator[bytes]:
            for index, stage in enumerate(self._stages):
                for piece in stage.finish():
                    yield from self._through(index + 1, piece)

        return self._checked(stages())


async def iter_decoded_body(
    request: Request, *, limit: int, decoded_limit: int
) -> AsyncIterator[bytes]:
    """The body decoded per its Content-Encoding, piece by piece as it arrives.

    Refuses (413) as soon as the bytes received pass `limit` or the decoded bytes pass
    `decoded_limit`, so a decompression bomb costs at most `decoded_limit` of work and
    one piece of memory, never its full expansion. 400 for an unknown coding or data
    that does not decode.
    """
    refuse_declared_over(request, limit)
    decoder = BodyDecoder(request.headers.get("content-encoding"))
    received = produced = 0

    def counted(piece: bytes) -> bytes:
        nonlocal produced
        produced += len(piece)
        if produced > decoded_limit:
            raise PayloadTooLarge(f"decompressed body is larger than {decoded_limit} bytes")
        return piece

    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        for piece in decoder.feed(chunk):
            yield counted(piece)
            if len(piece) >= DECODE_PIECE:
                # Let other requests run between the pieces of a large expansion (not
                # after each small body: a turn of the event loop per request for nothing).
                await asyncio.sleep(0)
    for piece in decoder.finish():
        yield counted(piece)


async def read_decoded_body(request: Request, *, limit: int, decoded_limit: int) -> bytes:
    """The whole decoded body, within the limits of `iter_decoded_body`."""
    return b"".join(
        [
            piece
            async for piece in iter_decoded_body(request, limit=limit, decoded_limit=decoded_limit)
        ]
    )
