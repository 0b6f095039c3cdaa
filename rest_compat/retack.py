"""The Retack error-log API (`../shared/seeds/000_c9dc7f95aaf2e109.txt`).

`POST /observe/error-log/` (the slash is optional here) with two headers:

- `ENV-KEY`: the project key (an `ingest` key is enough; `ENV_KEY` is read too, for
  clients whose HTTP stack turns dashes into underscores).
- the user context, "a unique identifier that represents the user or device that
  experienced the error": the document names it `HTTP_X_USER_CONTEXT`, which is how a
  Django server spells the header `X-User-Context`; both names are read. The document
  says it is required, so it is.

Parameters (`title` and `stack_trace`, both required) come from the query string, a
form body (`application/x-www-form-urlencoded` or `multipart/form-data`) or a JSON
object body (`application/json`; `text/plain` is read as JSON too, for `sendBeacon`).
"If a parameter is sent in both the query string and request body, the query string
parameter will be used."

Answers, in the shapes of the Django REST framework the document's header naming
comes from:

| case | status | body |
| --- | --- | --- |
| stored | 200 | `{"status": "ok", "event_id": "…"}` |
| no `ENV-KEY` / unknown or revoked key | 401 | `{"detail": "…"}` |
| key without the `ingest` scope | 403 | `{"detail": "…"}` |
| no user context header | 400 | `{"detail": "…"}` |
| a parameter missing, blank or not a string | 400 | `{"title": ["This field is required."], …}` |
| other parameters nested over 64 levels deep | 400 | `{"extra": ["nested deeper than …"]}` |
| body not JSON / not an object / not UTF-8 | 400 | `{"detail": "…"}` |
| body over the size limit | 413 | `{"detail": "…"}` |
| another content type | 415 | `{"detail": "Unsupported media type …"}` |

Mapping onto `EventIn` (type `exception`, level `error`, dialect `retack`):

| Retack | EventIn |
| --- | --- |
| title | message (the issue's title when the stack text names no exception) |
| stack_trace | raw_stacktrace (the ingest service parses it into frames) |
| user context header | user.id, and user.ip_address when it is an IP address |
| `User-Agent` header | user_agent |
| any other parameter | extra |
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from app.bodies import read_body
from app.domain.event import EventIn, EventType, Level, UserIn
from app.errors import ErrorgraphError, InvalidInput, InvalidKey
from app.services.ingest import ingest_events
from app.services.keys import grant_for_project_key
from rest_compat.common import (
    JSONOut,
    browser_route,
    client_ip,
    decode_urlencoded,
    error_response,
    limit_client,
    media_type,
    multipart_pairs,
    parse_json,
    query_pairs,
    runtime_of,
)

KEY_HEADERS = ("ENV-KEY", "ENV_KEY")
USER_CONTEXT_HEADERS = ("HTTP_X_USER_CONTEXT", "X-User-Context", "HTTP-X-USER-CONTEXT")
REQUIRED = ("title", "stack_trace")


class UnsupportedMediaType(InvalidInput):
    """A body in a format this endpoint does not read (415, as the framework says it)."""


def _header(request: Request, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = request.headers.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


async def _body_params(request: Request, body: bytes) -> dict[str, Any]:
    """The parameters of the body, by its content type; a JSON body must be an object."""
    kind = media_type(request)
    if not body.strip():
        return {}
    if kind == "application/x-www-form-urlencoded":
        return dict(decode_urlencoded(body, where="form body"))
    if kind == "multipart/form-data":
        return dict(await multipart_pairs(request, body))
    if (
        kind in ("application/json", "text/plain")
        or kind.endswith("+json")
        or (not kind and body.lstrip().startswith(b"{"))
    ):
        data = parse_json(body)
        if not isinstance(data, dict):
            raise InvalidInput(
                f"JSON body must be an object, not {type(data).__name__}", field="body"
            )
        return data
    if not kind:
        return dict(decode_urlencoded(body, where="form body"))
    raise UnsupportedMediaType(f'Unsupported media type "{kind}" in request.', field="body")


def _field_errors(params: dict[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for name in REQUIRED:
        value = params.get(name)
        if value is None:
            errors[name] = ["This field is required."]
        elif not isinstance(value, str):
            errors[name] = ["Not a valid string."]
        elif not value.strip():
            errors[name] = ["This field may not be blank."]
    return errors


def _user(context: str) -> UserIn:
    try:
        ip: str | None = str(ipaddress.ip_address(context))
    except ValueError:
        ip = None
    return UserIn(id=context, ip_address=ip)


def to_event(
    params: dict[str, Any], *, user_context: str, user_agent: str | None, ip: str | None
) -> EventIn:
    """Parameters already checked by `_field_errors` → the canonical event."""
    extra = {key: value for key, value in params.items() if key not in REQUIRED}
    return EventIn(
        type=EventType.EXCEPTION,
        level=Level.ERROR,
        message=params["title"].strip(),
        raw_stacktrace=params["stack_trace"],
        user=_user(user_context),
        user_agent=user_agent,
        extra=extra,
        dialect="retack",
        client_ip=ip,
    )


def _event_errors(exc: ValidationError) -> dict[str, list[str]]:
    """What the event made of the parameters cannot hold, in the shape of `_field_errors`
    (free-form parameters are checked together, as `extra`)."""
    errors: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        name = ".".join(str(part) for part in error["loc"]) or "body"
        errors.setdefault(name, []).append(error["msg"].removeprefix("Value error, "))
    return errors


def _detail(exc: ErrorgraphError) -> dict[str, Any]:
    if isinstance(exc, InvalidKey):
        return {"detail": f"Invalid ENV-KEY: {exc.message}"}
    return {"detail": exc.message}


async def post_error_log(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        await limit_client(request, dialect="retack")
        secret = _header(request, KEY_HEADERS)
        if secret is None:
            raise InvalidKey("ENV-KEY header is missing")
        grant = await grant_for_project_key(
            sessions=runtime.database.sessions, secret=secret, scope="ingest"
        )
        user_context = _header(request, USER_CONTEXT_HEADERS)
        if user_context is None:
            raise InvalidInput(
                "HTTP_X_USER_CONTEXT header is required: a unique identifier of the user "
                "or device that experienced the error (X-User-Context is read too)",
                field="HTTP_X_USER_CONTEXT",
            )
        body = await read_body(request, limit=runtime.settings.max_body_bytes)
        params = await _body_params(request, body)
        params.update(query_pairs(request))
        errors = _field_errors(params)
        if errors:
            return JSONOut(errors, status_code=400)
        try:
            event = to_event(
                params,
                user_context=user_context,
                user_agent=request.headers.get("user-agent"),
                ip=client_ip(request),
            )
        except ValidationError as exc:
            return JSONOut(_event_errors(exc), status_code=400)
        [result] = await ingest_events(
            writer=runtime.writer, project=grant.project, events=[event], key_id=grant.key_id
        )
    except UnsupportedMediaType as exc:
        return JSONOut(_detail(exc), status_code=415)
    except ErrorgraphError as exc:
        return error_response(exc, _detail)
    return JSONOut({"status": "ok", "event_id": result.event_id})


routes = [
    browser_route("/observe/error-log/", post_error_log, methods=["POST"]),
    browser_route("/observe/error-log", post_error_log, methods=["POST"]),
]
