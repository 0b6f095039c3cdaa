"""The ErrorStack API (`../shared/seeds/004_e47735d2315acd96.txt`).

`/submit` (GET or POST) records an error; `/log` (GET or POST) keeps a short log
message — "only the last 10 log messages are kept for a maximum of 1 hour" — and
`GET /log?_s=KEY` with no message fields returns the kept messages, oldest first.

Parameters come from the query string and, on POST, from a form body
(`application/x-www-form-urlencoded` as an HTML form or Python's
`logging.handlers.HTTPHandler` sends it, or `multipart/form-data`) or a JSON object;
the query string wins when both carry a name. Names starting with `_` steer the request
and are not stored:

- `_s` — the stack key: an errorgraph project key (`ingest` scope to submit and log,
  `read` to list the log, since an ingest key embedded in a page must read nothing).
  Missing or unknown → 401, without the scope → 403.
- `_r` — the answer: `json` for JSON; `img` or anything else (the default) for a 1-pixel
  transparent GIF (`image/gif`), so that an `<img>` beacon never shows a broken image.
  The GIF is sent on errors too, with the status saying what happened and the reason in
  `X-Error-Reason`. No answer may be cached: a cached beacon would not be sent again.

JSON answers: `{"status": "ok", "event_id": "…"}` for `/submit`, `{"status": "ok"}` for
`/log`, `{"messages": [{"created_at", "level", "message", "data"}, …]}` for the listing,
and `{"status": "error", "detail": "…", "field": "…"}` with a 4xx for bad input (400),
a bad key (401/403), a body over the size limit (413), or an unreadable content type
(415).

Mapping of `/submit` onto `EventIn` (names match in any case; every field sent is also
kept in `extra`, so nothing a client sends is lost):

| ErrorStack / Python `LogRecord` field | EventIn |
| --- | --- |
| `Msg` (a browser's `onerror` text) | exceptions[0]: "Uncaught TypeError: x" → type, value |
| `msg`/`message` of a Python record | message (type `message` without a traceback) |
| `exc_text`, `stack`, `stacktrace`, `stack_trace` | raw_stacktrace (type `exception`) |
| `levelname` / `level` (CRITICAL → fatal) | level (default, and for unknown names: error) |
| `name` | logger |
| `created` (Unix time) | timestamp (else the time received) |
| `URL` | url |
| `UserAgent` / `user_agent` (else the header) | user_agent |
| `Platform` (navigator.platform) | contexts.os.name |
| `Line`, `lineno`, `module`, `pathname`, `funcName`, … | extra only |

A Python record is one with `levelname`, `funcName` or `pathname`. Without a traceback it
is a message event grouped by `msg`, the unformatted template, as Python logging
integrations group; with one, the ingest service parses the frames. Python's HTTPHandler
sends a None attribute (`exc_text` when nothing formatted the record) as the text "None",
which counts as absent. `Line` and `lineno` make no frame: a frame without a function
would group every error of one file together.

A `/log` message is the `Msg`/`msg`/`message` field (or, without one, the fields written
as `name=value`), its level `levelname`/`level`, and every other field is kept with it.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from app.bodies import read_body
from app.domain.event import EventIn, EventType, ExceptionIn, Level
from app.domain.scrubbing import ScrubRules
from app.errors import ErrorgraphError, InvalidInput, InvalidKey
from app.services.ingest import ingest_events
from app.services.keys import KeyGrant, grant_for_project_key
from app.services.logs import append_log_message, project_log_messages
from rest_compat.common import (
    JSONOut,
    browser_route,
    client_ip,
    decode_urlencoded,
    headers_for,
    limit_client,
    media_type,
    multipart_pairs,
    parse_json,
    query_pairs,
    runtime_of,
    status_for,
)

DIALECT = "errorstack"
# The smallest transparent GIF: 1 by 1 pixel, a two-colour table, colour 0 marked transparent.
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
}
MESSAGE_FIELDS = ("msg", "message")
STACK_FIELDS = ("exc_text", "stack_trace", "stacktrace", "stack")
PYTHON_RECORD_FIELDS = ("levelname", "funcname", "pathname")
# "Uncaught TypeError: x" (Chrome), "TypeError: x" (Firefox), "Uncaught Error: x".
_JS_ERROR = re.compile(
    r"^(?:Uncaught\s+)?(?P<type>[A-Za-z_$][\w$.]*(?:Error|Exception)):\s*(?P<value>.*)$", re.S
)


class UnsupportedMediaType(InvalidInput):
    """A POST body in a format this API does not read (415)."""


class Params:
    """A request's parameters: the steering ones (`_s`, `_r`, …) and the fields sent."""

    def __init__(self, merged: dict[str, Any]) -> None:
        self.control = {key: value for key, value in merged.items() if key.startswith("_")}
        self.fields = {key: value for key, value in merged.items() if not key.startswith("_")}
        self._lower = {key.lower(): value for key, value in self.fields.items()}

    def text(self, *names: str) -> str | None:
        """The first of `names` (lower case) that was sent as non-empty text; Python's
        HTTPHandler sends a None attribute as the text "None", which counts as absent."""
        for name in names:
            value = self._lower.get(name)
            if value is None or isinstance(value, dict | list):
                continue
            text = value if isinstance(value, str) else str(value)
            if text.strip() and text != "None":
                return text
        return None

    def has(self, *names: str) -> bool:
        return any(name in self._lower for name in names)

    @property
    def secret(self) -> str | None:
        value = self.control.get("_s")
        return value.strip() if isinstance(value, str) and value.strip() else None


def _wants_json(request: Request, params: Params | None) -> bool:
    """`_r=json` asks for JSON. Read leniently from the query string first, so that even a
    request whose parameters cannot be parsed is answered in the form it asked for."""
    answer = request.query_params.get("_r")
    if answer is None and params is not None:
        answer = params.control.get("_r")
    return isinstance(answer, str) and answer.strip().lower() == "json"


def _answer(
    as_json: bool, content: dict[str, Any], *, status: int = 200, **headers: str
) -> Response:
    all_headers = {**NO_CACHE, **headers}
    if as_json:
        return JSONOut(content, status_code=status, headers=all_headers)
    return Response(PIXEL, status_code=status, media_type="image/gif", headers=all_headers)


def _error(as_json: bool, exc: ErrorgraphError) -> Response:
    status = 415 if isinstance(exc, UnsupportedMediaType) else status_for(exc)
    content: dict[str, Any] = {"status": "error", "detail": exc.message}
    if exc.field:
        content["field"] = exc.field
    # The GIF cannot carry the reason, so a header does (ASCII only, as headers must be).
    reason = re.sub(r"[^\x20-\x7e]", "?", exc.message)[:300]
    return _answer(
        as_json, content, status=status, **headers_for(exc), **{"X-Error-Reason": reason}
    )


async def _body_params(request: Request) -> dict[str, Any]:
    if request.method != "POST":
        return {}
    body = await read_body(request, limit=runtime_of(request).settings.max_body_bytes)
    if not body.strip():
        return {}
    kind = media_type(request)
    if kind == "multipart/form-data":
        return dict(await multipart_pairs(request, body))
    if kind in ("application/json", "text/plain") or kind.endswith("+json"):
        data = parse_json(body)
        if not isinstance(data, dict):
            raise InvalidInput(
                f"JSON body must be an object, not {type(data).__name__}", field="body"
            )
        return data
    if kind in ("application/x-www-form-urlencoded", ""):
        return dict(decode_urlencoded(body, where="form body"))
    raise UnsupportedMediaType(f'unsupported media type "{kind}"', field="body")


async def _params(request: Request) -> Params:
    merged = await _body_params(request)
    merged.update(query_pairs(request))
    return Params(merged)


async def _grant(request: Request, params: Params, *, scope: str) -> KeyGrant:
    if params.secret is None:
        raise InvalidKey("the stack key _s is missing", field="_s")
    try:
        return await grant_for_project_key(
            sessions=runtime_of(request).database.sessions, secret=params.secret, scope=scope
        )
    except ErrorgraphError as exc:
        exc.field = "_s"
        raise


def _level(params: Params) -> Level:
    named = params.text("levelname", "level")
    try:
        return Level.parse(named, default=Level.ERROR)
    except ValueError:
        return Level.ERROR


def _timestamp(params: Params) -> datetime | None:
    created = params.text("created")
    try:
        seconds = float(created) if created is not None else math.nan
    except ValueError:
        return None
    if not math.isfinite(seconds) or not 0 < seconds < 32_503_680_000:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)


def _exception_from_message(message: str | None) -> ExceptionIn:
    if message is None:
        return ExceptionIn()
    match = _JS_ERROR.match(message.strip())
    if match:
        return ExceptionIn(type=match["type"], value=match["value"] or None)
    return ExceptionIn(value=message)


def to_event(params: Params, *, user_agent: str | None, ip: str | None) -> EventIn:
    """A `/submit` request's fields → the canonical event (see the module's table)."""
    stack = params.text(*STACK_FIELDS)
    python_record = params.has(*PYTHON_RECORD_FIELDS)
    message = params.text(*MESSAGE_FIELDS)
    exceptions: list[ExceptionIn] = []
    if stack is not None:
        kind = EventType.EXCEPTION
        if message is None:
            # Keeps an event whose stack text cannot be parsed valid; the parser's
            # exception replaces this empty one when it can.
            exceptions = [ExceptionIn()]
    elif python_record and message is not None:
        kind = EventType.MESSAGE
    else:
        kind = EventType.EXCEPTION
        exceptions = [_exception_from_message(message)]
        message = None
    platform = params.text("platform")
    return EventIn(
        timestamp=_timestamp(params) or datetime.now(UTC),
        type=kind,
        level=_level(params),
        platform="python" if python_record else None,
        logger=params.text("name"),
        message=message,
        exceptions=exceptions,
        raw_stacktrace=stack,
        url=params.text("url"),
        user_agent=params.text("useragent", "user_agent") or user_agent,
        contexts={"os": {"name": platform}} if platform else {},
        extra=dict(params.fields),
        dialect=DIALECT,
        client_ip=ip,
    )


async def submit(request: Request) -> Response:
    params: Params | None = None
    try:
        await limit_client(request, dialect=DIALECT)
        params = await _params(request)
        grant = await _grant(request, params, scope="ingest")
        event = to_event(
            params, user_agent=request.headers.get("user-agent"), ip=client_ip(request)
        )
        runtime = runtime_of(request)
        [result] = await ingest_events(
            writer=runtime.writer, project=grant.project, events=[event], key_id=grant.key_id
        )
    except ErrorgraphError as exc:
        return _error(_wants_json(request, params), exc)
    return _answer(_wants_json(request, params), {"status": "ok", "event_id": result.event_id})


def _log_text(params: Params) -> str:
    message = params.text(*MESSAGE_FIELDS)
    if message is not None:
        return message
    return " ".join(f"{key}={value}" for key, value in params.fields.items())


async def _list_log(request: Request, params: Params) -> Response:
    grant = await _grant(request, params, scope="read")
    assert grant.project.id is not None
    rows = await project_log_messages(
        sessions=runtime_of(request).database.sessions, project_id=grant.project.id
    )
    messages = [
        {
            "created_at": row.created_at.isoformat(),
            "level": row.level,
            "message": row.message,
            "data": row.data or {},
        }
        for row in rows
    ]
    return JSONOut({"messages": messages}, headers=NO_CACHE)


async def log(request: Request) -> Response:
    params: Params | None = None
    listing = False
    try:
        await limit_client(request, dialect=DIALECT)
        params = await _params(request)
        if not params.fields:
            if request.method == "GET":
                # The listing is a read API: it answers JSON, errors included.
                listing = True
                return await _list_log(request, params)
            raise InvalidInput("nothing to log: send Msg (or msg, message)", field="Msg")
        grant = await _grant(request, params, scope="ingest")
        assert grant.project.id is not None
        message = params.text(*MESSAGE_FIELDS)
        level = params.text("levelname", "level")
        await append_log_message(
            sessions=runtime_of(request).database.write_sessions,
            project_id=grant.project.id,
            project_key_id=grant.key_id,
            message=_log_text(params),
            level=level.lower() if level else None,
            data={
                key: value
                for key, value in params.fields.items()
                if message is None or key.lower() not in MESSAGE_FIELDS
            },
            scrub=ScrubRules.for_project(
                grant.project.scrub_fields, grant.project.scrub_ip_addresses
            ),
        )
    except ErrorgraphError as exc:
        return _error(listing or _wants_json(request, params), exc)
    return _answer(_wants_json(request, params), {"status": "ok"})


routes = [
    browser_route("/submit", submit, methods=["GET", "POST"]),
    browser_route("/log", log, methods=["GET", "POST"]),
]
