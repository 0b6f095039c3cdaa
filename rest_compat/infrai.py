"""The Infrai error-tracking module (`../shared/seeds/002_6fd0667f90cc85a3.txt`).

Sixteen capabilities under `/v1/errors/`, each with `Authorization: Bearer <key>`, where
the key is an errorgraph project key. The key decides the project; there is no project
parameter. An `ingest` key (`pk_…`) may capture and send messages and nothing else; a
key with `read` may use the reading capabilities; the capabilities that change state
need `write` (the default `sk_…` key has read and write).

| capability | endpoint | scope | answer |
| --- | --- | --- | --- |
| capture | POST /v1/errors/capture | ingest | 200 `{ok, error_id}` |
| message | POST /v1/errors/message | ingest | 200 CaptureResult |
| list | GET /v1/errors/list | read | 200 ErrorEventList |
| search | GET /v1/errors/search | read | 200 ErrorEventList |
| get | GET /v1/errors/get/{event_id} | read | 200 ErrorEvent |
| groups | GET /v1/errors/groups | read | 200 ErrorGroupList |
| group_detail | GET /v1/errors/group_detail/{error_group_id} | read | 200 ErrorGroupDetail |
| events | GET /v1/errors/events/{error_group_id} | read | 200 ErrorEventList |
| resolve | POST /v1/errors/resolve/{error_group_id} | write | 200 ErrorGroup |
| unresolve | POST /v1/errors/unresolve/{error_group_id} | write | 200 ErrorGroup |
| ignore | POST /v1/errors/ignore/{error_group_id} | write | 200 ErrorGroup |
| delete | DELETE /v1/errors/delete/{error_group_id} | write | 200 DeleteResult |
| bulk | POST /v1/errors/bulk | write | 200 ErrorBulkResult |
| export | POST /v1/errors/export | read | 200 ErrorExportResult |
| retention.get | GET /v1/errors/retention/get | read | 200 Retention |
| retention.set | PUT /v1/errors/retention/set | write | 200 Retention |

The document names the result types without spelling them out; here they are:

- Retention: `{days, auto_export_before_cleanup, export_destination}`, as documented.
- CaptureResult: `{"ok": true, "error_id", "error_group_id"}`. `error_id` is the event's
  id, the one `get` takes.
- ErrorEvent: `{"id", "error_group_id", "timestamp", "received_at", "type", "level",
  "message", "code", "exception": {"type", "message", "stacktrace", "frames": [{filename,
  function, module, lineno, colno, in_app}]} | null, "tags", "environment", "release",
  "user_id", "platform", "url", "extra", "source"}` — the capture body's own field names,
  so what a client sends is what it reads back. Times are ISO 8601 in UTC.
- ErrorGroup: `{"id", "title", "culprit", "exception_type", "message", "level",
  "platform", "status", "is_regression", "count", "user_count", "first_seen",
  "last_seen", "first_release", "last_release", "resolved_at", "ignored_at"}`.
- ErrorGroupDetail: an ErrorGroup plus `"latest_event"` (ErrorEvent or null), `"tags"`
  (`{key: [{"value", "count"}]}`, the most frequent values), `"releases"` and
  `"environments"` (`[{"name", "count", "first_seen", "last_seen"}]`) and
  `"histogram"` (events per hour over the last 24 hours: `[{"time", "count"}]`).
- ErrorEventList, ErrorGroupList: `{"items": [...], "next_cursor": str | null,
  "has_more": bool}`. Pass `next_cursor` back as `cursor` for the next page; it is
  opaque and only valid for the same list (and, for groups, the same `sort`). `limit`
  is 1 to 100, 25 by default. Groups sort by `last_seen_desc` unless told otherwise.
- DeleteResult: `{"id", "deleted": true}`.
- ErrorBulkResult: `{"action", "updated": [ids], "failed": [{"id", "reason"}]}`. An id
  that names no group of the key's project fails with `not found`; the others change.
  At most 1000 ids per call; an empty list changes nothing.
- ErrorExportResult: `{"format", "row_count", "truncated", "content", "download_url",
  "expires_at"}`. `content` holds up to 1000 events as JSON (an array) or CSV text, in
  errorgraph's export format. When more matched, `truncated` is true; `download_url`
  (GET it with the same Authorization header) streams every row. A download can repeat
  only the filter keys `since`, `until` and `error_group_id`, so a filter on anything
  else gets `download_url` null: narrow it until it fits, or page with `list`.

`filter` (list, search, export) is a JSON object; on GET it is URL-encoded JSON in the
query string (`?filter=%7B%22level%22%3A%22error%22%7D`). Every key is optional, all must
match, and an unknown key is refused (400) rather than ignored, so a typo never silently
widens a result:

| key | type | matches events |
| --- | --- | --- |
| level | "debug" \\| "info" \\| "warning" \\| "error" \\| "fatal" | of that level |
| environment | string | of that environment |
| release | string | of that release |
| tags | {string: string} | carrying every one of these tags |
| since | ISO 8601 time or Unix seconds | at or after it |
| until | ISO 8601 time or Unix seconds | before it |
| error_group_id | string (or number) | of that error group |

Resolve, unresolve and ignore take the group from the path; the body the document's
examples send (`{"error_group_id": "..."}`) is optional and, when its id differs, the
path wins. `message` with `idempotency_key` (capture takes it too, and both read an
`Idempotency-Key` header when the body has none) stores the event under an id derived
from the key and the project, so the ingest service's event-id deduplication makes a
repeat answer the first result and store nothing new, however many processes take it.

Errors, on every path under `/v1/errors/`, are `{"ok": false, "error": {"code",
"message", "field"}}` (`field` null when no one field is to blame):

| status | code | when |
| --- | --- | --- |
| 400 | INVALID_ARGUMENT | a body not JSON, UTF-8 or an object; a bad field, filter or cursor |
| 401 | UNAUTHENTICATED | no `Authorization: Bearer` header; unknown or revoked key |
| 403 | FORBIDDEN | the key lacks the scope (an ingest key reading, a read key writing) |
| 404 | NOT_FOUND | no such event or group in the key's project; no such capability |
| 405 | METHOD_NOT_ALLOWED | another method than the capability's (`Allow` says which) |
| 413 | PAYLOAD_TOO_LARGE | a body over `max_body_bytes` |
| 429 | RATE_LIMITED | (with `Retry-After`) |
| 503 | UNAVAILABLE | the server cannot store now (with `Retry-After`) |

The document's `{"days": 0}` example of retention.set is a placeholder: days run from 1
to 3650 and 0 is answered 400 naming `days`.

Mapping onto `EventIn` (dialect `infrai`, timestamp: when received):

| Infrai | EventIn |
| --- | --- |
| capture `message` / `exception.message` | exceptions[0].value (`message` too when both differ) |
| capture `exception.type` | exceptions[0].type |
| capture `stack` / `exception.stacktrace` | raw_stacktrace (the ingest service parses it) |
| capture `code` | tags.code (over a `code` in `tags`) |
| capture `level` (default `error`) | level, type `exception` |
| message `text`, `level` (default `info`) | message, level, type `message` |
| `tags` | tags |
| `user_id` | user.id |
| `release`, `environment` | same |

Levels are the document's five names. The message capability's `environment` is one of
its three (`production`, `staging`, `development`); capture, which the document gives no
environment, takes any. Unknown body fields are ignored; a known one of the wrong JSON
type is refused with its name.
| `idempotency_key` / `Idempotency-Key` | event_id = sha256(project, key), 32 hex digits |
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypedDict, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.bodies import read_body
from app.domain.event import (
    EventIn,
    EventType,
    ExceptionIn,
    Level,
    UserIn,
    free_form,
    without_nul,
)
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
from app.services import events as event_service
from app.services import exports as export_service
from app.services import issues as issue_service
from app.services import retention as retention_service
from app.services.common import MAX_INT_COLUMN, Sessions
from app.services.events import EventFilter
from app.services.ingest import ingest_events
from app.services.keys import KeyGrant, grant_for_project_key
from app.services.pagination import MAX_PAGE, Page
from app.services.runtime import Runtime
from app.services.search import search_words
from rest_compat.common import (
    JSONOut,
    client_ip,
    headers_for,
    limit_client,
    parse_json,
    query_pairs,
    runtime_of,
    status_for,
)

BASE = "/v1/errors"
MAX_BULK_IDS = issue_service.MAX_BULK
MAX_IDEMPOTENCY_KEY = 255

CODE_BY_ERROR: dict[type[ErrorgraphError], str] = {
    InvalidKey: "UNAUTHENTICATED",
    Forbidden: "FORBIDDEN",
    NotFound: "NOT_FOUND",
    PayloadTooLarge: "PAYLOAD_TOO_LARGE",
    InvalidInput: "INVALID_ARGUMENT",
    QuotaExceeded: "RATE_LIMITED",
    Unavailable: "UNAVAILABLE",
}

# Services name their arguments as the GraphQL API does; a client of this dialect must
# read the names it sent.
FIELD_NAMES = {
    "first": "limit",
    "after": "cursor",
    "ids": "error_group_ids",
    "exportDestination": "export_destination",
    "autoExportBeforeCleanup": "auto_export_before_cleanup",
    "projectId": None,
    "body": None,
}


# --- Errors --------------------------------------------------------------------------


class ErrorBody(TypedDict):
    code: str
    message: str
    field: str | None


def _error(
    status: int, code: str, message: str, field: str | None = None, **headers: str
) -> Response:
    body: dict[str, Any] = {
        "ok": False,
        "error": ErrorBody(code=code, message=message, field=field),
    }
    return JSONOut(body, status_code=status, headers=headers or None)


def _code_for(exc: ErrorgraphError) -> str:
    for cls in type(exc).__mro__:
        if cls in CODE_BY_ERROR:
            return CODE_BY_ERROR[cls]  # type: ignore[index]
    return "INVALID_ARGUMENT"


def _in_our_words(message: str, field: str | None) -> str:
    """A service's message with the service's argument names replaced by ours."""
    renamed = FIELD_NAMES.get(field) if field else None
    if field and renamed and message.startswith(field + " "):
        message = renamed + message[len(field) :]
    for name, ours in FIELD_NAMES.items():
        if ours and not name.islower():  # camelCase names cannot be ordinary words
            message = message.replace(name, ours)
    return message


def error_response(exc: ErrorgraphError) -> Response:
    """The one mapping from a domain error to this dialect's answer."""
    field = FIELD_NAMES.get(exc.field, exc.field) if exc.field else None
    message = _in_our_words(exc.message, exc.field)
    response = _error(status_for(exc), _code_for(exc), message, field)
    response.headers.update(headers_for(exc))
    return response


def _invalid(exc: ValidationError, *, prefix: str = "") -> InvalidInput:
    """The first problem pydantic found, as `field: message` naming the field."""
    error = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    parts = [prefix] if prefix else []
    parts += [str(part) for part in error["loc"]]
    field = ".".join(parts) or None
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "is required"
    elif error["type"] == "extra_forbidden":
        message = "is not a known key"
    return InvalidInput(f"{field}: {message}" if field else message, field=field)


# --- Request bodies ------------------------------------------------------------------


class _Strict(BaseModel):
    """JSON types as the document states them: a number is not a string, nor the reverse."""

    model_config = ConfigDict(strict=True, extra="ignore")


M = TypeVar("M", bound=BaseModel)


def _is_ref(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be an error group id (a string)")
    return value


LevelName = Literal["debug", "info", "warning", "error", "fatal"]
Tags = dict[str, str]


def _in_utc(moment: datetime) -> datetime:
    try:
        return _utc(moment)
    except OverflowError:
        # 0001-01-01T00:00+01:00 is a valid time that has no UTC date Python can hold.
        raise ValueError("is out of range once converted to UTC") from None


# Times come as ISO 8601 text or Unix seconds: the one place where JSON's types are read
# leniently, since JSON has no time type.
Moment = Annotated[datetime, Field(strict=False), AfterValidator(_in_utc)]


# Group ids are strings in the document; numbers are taken too. Checked by `_is_ref`, not
# by a union type, whose errors would name the union's members instead of the field.
GroupRef = Annotated[Any, AfterValidator(_is_ref)]


class FilterIn(_Strict):
    """The `filter` object: see the module docstring for its keys."""

    model_config = ConfigDict(strict=True, extra="forbid")

    level: LevelName | None = None
    environment: str | None = None
    release: str | None = None
    tags: Tags = Field(default_factory=dict)
    since: Moment | None = None
    until: Moment | None = None
    error_group_id: GroupRef | None = None


class CaptureException(_Strict):
    type: str | None = None
    message: str | None = None
    stacktrace: str | None = None


class CaptureIn(_Strict):
    """The parameter table's fields, the example's `exception` and `level`, and the
    message capability's user, release and environment, which apply to errors as well."""

    message: str | None = None
    code: str | None = None
    stack: str | None = None
    tags: Tags = Field(default_factory=dict)
    exception: CaptureException | None = None
    level: LevelName = "error"
    user_id: str | None = None
    release: str | None = None
    environment: str | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY)

    def names_the_error(self) -> bool:
        """A message, or an exception with a type or a message: something to title it."""
        exception = self.exception or CaptureException()
        return any(
            (text or "").strip() for text in (self.message, exception.type, exception.message)
        )


class MessageIn(_Strict):
    text: str = Field(min_length=1)
    level: LevelName = "info"
    tags: Tags = Field(default_factory=dict)
    user_id: str | None = None
    release: str | None = None
    environment: Literal["production", "staging", "development"] | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY)


class GroupRefIn(_Strict):
    """The optional body of resolve, unresolve and ignore (the path names the group)."""

    error_group_id: GroupRef | None = None


class BulkIn(_Strict):
    error_group_ids: list[GroupRef] = Field(max_length=MAX_BULK_IDS)
    action: Literal["resolve", "unresolve", "ignore", "delete"]


class ExportIn(_Strict):
    filter: FilterIn | None = None
    format: Literal["json", "csv"] = "json"


class RetentionIn(_Strict):
    days: int
    auto_export_before_cleanup: bool | None = None
    export_destination: str | None = None


def _validated(model: type[M], data: object, *, prefix: str = "") -> M:
    if not isinstance(data, dict):
        where = prefix or "body"
        raise InvalidInput(
            f"{where} must be a JSON object, not {type(data).__name__}",
            field=prefix or None,
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, prefix=prefix) from None


# --- The call: who is asking, and what they sent -------------------------------------


def bearer_key(request: Request) -> str:
    value = request.headers.get("authorization", "").strip()
    scheme, _, secret = value.partition(" ")
    if not value:
        raise InvalidKey("missing Authorization header: send Authorization: Bearer <key>")
    if scheme.lower() != "bearer" or not secret.strip():
        raise InvalidKey("the Authorization header must be Bearer <key>")
    return secret.strip()


@dataclass(frozen=True)
class Call:
    request: Request
    runtime: Runtime
    grant: KeyGrant

    @property
    def sessions(self) -> Sessions:
        return self.runtime.database.sessions

    @property
    def project_id(self) -> int:
        project_id = self.grant.project.id
        assert project_id is not None
        return project_id

    # NUL characters are removed from everything a client sends, as `EventIn` removes
    # them from events: PostgreSQL cannot take them even as a query parameter, and a
    # filter must match what was stored.

    async def body(self, *, optional: bool = False) -> Any:
        """The JSON body; with `optional`, an empty body reads as `{}`."""
        raw = await read_body(self.request, limit=self.runtime.settings.max_body_bytes)
        if optional and not raw.strip():
            return {}
        return _cleaned(parse_json(raw), field="body")

    def query(self) -> dict[str, str]:
        params: dict[str, str] = {}
        for name, value in query_pairs(self.request):
            if name in params:
                raise InvalidInput(f"{name} is given more than once", field=name)
            params[name] = without_nul(value)
        return params

    def path(self, name: str) -> str:
        return str(without_nul(self.request.path_params[name]))


def _cleaned(value: Any, *, field: str) -> Any:
    """Parsed JSON without NUL, refused past the nesting events may have (`free_form`)."""
    try:
        return free_form(value)
    except ValueError as exc:
        raise InvalidInput(f"the {field} is {exc}", field=field) from None


FORBIDDEN_BY_SCOPE = {
    "ingest": "this key may not capture errors: use an ingest key or a key with 'write'",
    "read": "this key has no 'read' scope: an ingest key may only capture and send messages",
    "write": "this key has no 'write' scope: changing errors needs a key with 'write'",
}


async def _grant(request: Request, runtime: Runtime, scope: str) -> KeyGrant:
    try:
        return await grant_for_project_key(
            sessions=runtime.database.sessions, secret=bearer_key(request), scope=scope
        )
    except Forbidden:
        raise Forbidden(FORBIDDEN_BY_SCOPE[scope]) from None


Handler = Callable[[Call], Awaitable[Any]]


class Capability:
    """One capability's endpoint: other methods get 405 in this dialect's error shape
    (not the framework's), the key is checked for the scope before anything is read,
    and every domain error is answered through `error_response`."""

    def __init__(self, method: str, scope: str, handler: Handler) -> None:
        self.methods = frozenset({method, "HEAD"} if method == "GET" else {method})
        self.scope = scope
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self._answer(request)
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        allow = ", ".join(sorted(self.methods | {"OPTIONS"}))
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allow})
        if request.method not in self.methods:
            return _error(
                405,
                "METHOD_NOT_ALLOWED",
                f"{request.method} is not allowed here; use {' or '.join(sorted(self.methods))}",
                Allow=allow,
            )
        runtime = runtime_of(request)
        try:
            await limit_client(request, dialect="infrai")
            grant = await _grant(request, runtime, self.scope)
            content = await self.handler(Call(request=request, runtime=runtime, grant=grant))
        except ErrorgraphError as exc:
            return error_response(exc)
        return JSONOut(content)


class NoCapability:
    """Any other path under /v1/errors: 404 in this dialect's shape, whatever the method."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        response = _error(404, "NOT_FOUND", f"no capability at {path}")
        await response(scope, receive, send)


# --- Rendering -----------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return _utc(moment).isoformat().replace("+00:00", "Z")


FRAME_FIELDS = ("filename", "function", "module", "lineno", "colno", "in_app")


def event_out(event: Any) -> dict[str, Any]:
    """An ErrorEvent: the stored event under the capture body's names."""
    chain = event.exceptions or []
    primary = chain[-1] if chain else {}
    exception = None
    if event.type == EventType.EXCEPTION.value:
        exception = {
            "type": event.exception_type,
            "message": event.exception_value,
            "stacktrace": event.raw_stacktrace,
            "frames": [
                {name: frame.get(name) for name in FRAME_FIELDS}
                for frame in primary.get("frames") or []
            ],
        }
    tags = event.tags or {}
    return {
        "id": event.event_id,
        "error_group_id": str(event.group_id),
        "timestamp": _iso(event.timestamp),
        "received_at": _iso(event.received_at),
        "type": event.type,
        "level": event.level,
        "message": event.message or event.exception_value,
        "code": tags.get("code"),
        "exception": exception,
        "tags": tags,
        "environment": event.environment,
        "release": event.release,
        "user_id": (event.user or {}).get("id"),
        "platform": event.platform,
        "url": event.url,
        "extra": event.extra or {},
        "source": event.dialect,
    }


def group_out(group: Any) -> dict[str, Any]:
    """An ErrorGroup."""
    return {
        "id": str(group.id),
        "title": group.title,
        "culprit": group.culprit,
        "exception_type": group.exception_type,
        "message": group.message,
        "level": group.level,
        "platform": group.platform,
        "status": group.status,
        "is_regression": group.is_regression,
        "count": group.count,
        "user_count": group.user_count,
        "first_seen": _iso(group.first_seen),
        "last_seen": _iso(group.last_seen),
        "first_release": group.first_release,
        "last_release": group.last_release,
        "resolved_at": _iso(group.resolved_at),
        "ignored_at": _iso(group.ignored_at),
    }


def page_out(page: Page[Any], render: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    return {
        "items": [render(item) for item in page.items],
        "next_cursor": page.end_cursor if page.has_next else None,
        "has_more": page.has_next,
    }


def _seen_out(seen: issue_service.Seen) -> dict[str, Any]:
    return {
        "name": seen.name,
        "count": seen.count,
        "first_seen": _iso(seen.first_seen),
        "last_seen": _iso(seen.last_seen),
    }


# --- Parameters ----------------------------------------------------------------------


def _as_id(value: str | int) -> int | None:
    """Our ids are integers that fit their column; anything else names no row."""
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    number = int(text)
    return number if number <= MAX_INT_COLUMN else None


def _group_id(value: str | int) -> int:
    """A group id from a path: what names no group is 404, not 400."""
    group_id = _as_id(value)
    if group_id is None:
        raise NotFound(f"no error group {value!r}", field="error_group_id")
    return group_id


def _limit(params: dict[str, str]) -> int | None:
    raw = params.get("limit")
    if raw is None:
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 3) or not 1 <= int(text) <= MAX_PAGE:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_PAGE}", field="limit")
    return int(text)


def _cursor(params: dict[str, str]) -> str | None:
    return params.get("cursor") or None


def _filter_from_query(params: dict[str, str]) -> FilterIn | None:
    raw = params.get("filter")
    if raw is None or not raw.strip():
        return None
    try:
        data = parse_json(raw.encode())
    except InvalidInput:
        raise InvalidInput(
            "filter must be URL-encoded JSON, like filter=%7B%22level%22%3A%22error%22%7D",
            field="filter",
        ) from None
    return _validated(FilterIn, _cleaned(data, field="filter"), prefix="filter")


def event_filter(call: Call, spec: FilterIn | None, *, search: str | None = None) -> EventFilter:
    """The service's filter for `spec`, always limited to the key's project."""
    spec = spec or FilterIn()
    since = _utc(spec.since) if spec.since else None
    until = _utc(spec.until) if spec.until else None
    if since and until and since >= until:
        raise InvalidInput("filter.since: must be before filter.until", field="filter.since")
    group_id = None
    if spec.error_group_id is not None:
        group_id = _as_id(spec.error_group_id)
        if group_id is None:
            raise InvalidInput(
                "filter.error_group_id: must be an error group id", field="filter.error_group_id"
            )
    return EventFilter(
        visible=frozenset({call.project_id}),
        project_id=call.project_id,
        group_id=group_id,
        level=spec.level,
        environment=spec.environment,
        release=spec.release,
        since=since,
        until=until,
        search=search,
        tags=tuple(sorted(spec.tags.items())),
    )


async def _own_group(call: Call, value: str | int) -> Any:
    """The group, when it belongs to the key's project; otherwise it does not exist."""
    group_id = _group_id(value)
    try:
        group = await issue_service.get_group(sessions=call.sessions, group_id=group_id)
    except NotFound:
        group = None
    if group is None or group.project_id != call.project_id:
        raise NotFound(f"no error group {str(value)!r}", field="error_group_id")
    return group


# --- Capture -------------------------------------------------------------------------


def idempotent_event_id(project_id: int, key: str) -> str:
    """The same key in the same project always names the same event, so the ingest
    service's event-id deduplication is the idempotency, across processes too."""
    digest = hashlib.sha256(f"infrai:{project_id}:{key}".encode()).hexdigest()
    return digest[:32]


def _idempotency_key(call: Call, in_body: str | None) -> str | None:
    if in_body is not None:
        return in_body
    header = call.request.headers.get("idempotency-key")
    if header is None:
        return None
    header = header.strip()
    if not header or len(header) > MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(
            f"Idempotency-Key must have 1 to {MAX_IDEMPOTENCY_KEY} characters",
            field="Idempotency-Key",
        )
    return header


def _user(user_id: str | None) -> UserIn | None:
    return UserIn(id=user_id) if user_id else None


def _canonical(fields: dict[str, Any], event_id: str | None) -> EventIn:
    """`EventIn` from checked fields; should it still refuse one, that is the client's
    input (400), never a server error."""
    if event_id is not None:
        fields["event_id"] = event_id
    try:
        return EventIn.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None


def capture_event(body: CaptureIn, *, event_id: str | None, ip: str | None) -> EventIn:
    """The capture body → the canonical event (see the mapping table)."""
    exception = body.exception or CaptureException()
    value = exception.message or body.message
    tags = dict(body.tags)
    if body.code is not None:
        tags["code"] = body.code
    fields: dict[str, Any] = {
        "type": EventType.EXCEPTION,
        "level": Level(body.level),
        "exceptions": [ExceptionIn(type=exception.type or None, value=value or None)],
        "message": body.message if body.message and body.message != value else None,
        "raw_stacktrace": exception.stacktrace or body.stack or None,
        "tags": tags,
        "user": _user(body.user_id),
        "release": body.release,
        "environment": body.environment,
        "dialect": "infrai",
        "client_ip": ip,
    }
    return _canonical(fields, event_id)


def message_event(body: MessageIn, *, event_id: str | None, ip: str | None) -> EventIn:
    fields: dict[str, Any] = {
        "type": EventType.MESSAGE,
        "level": Level(body.level),
        "message": body.text,
        "tags": body.tags,
        "user": _user(body.user_id),
        "release": body.release,
        "environment": body.environment,
        "dialect": "infrai",
        "client_ip": ip,
    }
    return _canonical(fields, event_id)


async def _store(call: Call, event: EventIn) -> tuple[str, int]:
    [result] = await ingest_events(
        writer=call.runtime.writer,
        project=call.grant.project,
        events=[event],
        key_id=call.grant.key_id,
    )
    return result.event_id, result.group_id


async def capture(call: Call) -> dict[str, Any]:
    body = _validated(CaptureIn, await call.body())
    if not body.names_the_error():
        raise InvalidInput(
            "message: is required (or exception with a type or a message)", field="message"
        )
    key = _idempotency_key(call, body.idempotency_key)
    event_id = idempotent_event_id(call.project_id, key) if key else None
    stored_id, _group = await _store(
        call, capture_event(body, event_id=event_id, ip=client_ip(call.request))
    )
    return {"ok": True, "error_id": stored_id}


async def message(call: Call) -> dict[str, Any]:
    body = _validated(MessageIn, await call.body())
    key = _idempotency_key(call, body.idempotency_key)
    event_id = idempotent_event_id(call.project_id, key) if key else None
    stored_id, group_id = await _store(
        call, message_event(body, event_id=event_id, ip=client_ip(call.request))
    )
    return {"ok": True, "error_id": stored_id, "error_group_id": str(group_id)}


# --- Reading events ------------------------------------------------------------------


async def _event_page(call: Call, where: EventFilter, params: dict[str, str]) -> dict[str, Any]:
    page = await event_service.list_events(
        sessions=call.sessions, where=where, first=_limit(params), after=_cursor(params)
    )
    return page_out(page, event_out)


async def list_events(call: Call) -> dict[str, Any]:
    params = call.query()
    return await _event_page(call, event_filter(call, _filter_from_query(params)), params)


async def search_events(call: Call) -> dict[str, Any]:
    params = call.query()
    q = params.get("q")
    if q is None or not q.strip():
        raise InvalidInput("q is required: the words to search for", field="q")
    if not search_words(q):
        # The service reads no words as "no condition": that would list every event.
        raise InvalidInput("q must contain at least one letter or digit", field="q")
    where = event_filter(call, _filter_from_query(params), search=q)
    return await _event_page(call, where, params)


async def get_event(call: Call) -> dict[str, Any]:
    ref = call.path("event_id")
    event = await event_service.event_by_ref(
        sessions=call.sessions, ref=ref, visible=frozenset({call.project_id})
    )
    return event_out(event)


async def group_events(call: Call) -> dict[str, Any]:
    params = call.query()
    group = await _own_group(call, call.path("error_group_id"))
    where = EventFilter(
        visible=frozenset({call.project_id}), project_id=call.project_id, group_id=group.id
    )
    return await _event_page(call, where, params)


# --- Groups --------------------------------------------------------------------------

SORTS: dict[str, issue_service.GroupSort] = {
    "count_desc": "COUNT_DESC",
    "last_seen_desc": "LAST_SEEN_DESC",
    "first_seen_desc": "FIRST_SEEN_DESC",
}
STATUSES = ("unresolved", "resolved", "ignored")


async def list_groups(call: Call) -> dict[str, Any]:
    params = call.query()
    status = params.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", field="status")
    sort = params.get("sort", "last_seen_desc")
    if sort not in SORTS:
        raise InvalidInput(f"sort must be one of {', '.join(SORTS)}", field="sort")
    page = await issue_service.list_groups(
        sessions=call.sessions,
        where=issue_service.GroupFilter(
            visible=frozenset({call.project_id}), project_id=call.project_id, status=status
        ),
        sort=SORTS[sort],
        first=_limit(params),
        after=_cursor(params),
    )
    return page_out(page, group_out)


async def group_detail(call: Call) -> dict[str, Any]:
    group = await _own_group(call, call.path("error_group_id"))
    sessions = call.sessions
    latest = await event_service.latest_events_by_group(sessions=sessions, group_ids=[group.id])
    tags = await issue_service.group_tags(sessions=sessions, group_id=group.id)
    releases = await issue_service.group_releases(sessions=sessions, group_id=group.id)
    environments = await issue_service.group_environments(sessions=sessions, group_id=group.id)
    histogram = await issue_service.group_histogram(sessions=sessions, group_id=group.id)
    latest_event = latest.get(group.id)
    return {
        **group_out(group),
        "latest_event": event_out(latest_event) if latest_event is not None else None,
        "tags": {
            key: [{"value": value, "count": count} for value, count in values]
            for key, values in tags.items()
        },
        "releases": [_seen_out(seen) for seen in releases],
        "environments": [_seen_out(seen) for seen in environments],
        "histogram": [{"time": _iso(moment), "count": count} for moment, count in histogram],
    }


async def _path_group(call: Call) -> Any:
    """The group a status change names in its path, after checking the optional body."""
    _validated(GroupRefIn, await call.body(optional=True))
    return await _own_group(call, call.path("error_group_id"))


async def resolve(call: Call) -> dict[str, Any]:
    group = await _path_group(call)
    row = await issue_service.resolve_group(
        sessions=call.sessions, group_id=group.id, pubsub=call.runtime.pubsub
    )
    return group_out(row)


async def unresolve(call: Call) -> dict[str, Any]:
    group = await _path_group(call)
    row = await issue_service.unresolve_group(
        sessions=call.sessions, group_id=group.id, pubsub=call.runtime.pubsub
    )
    return group_out(row)


async def ignore(call: Call) -> dict[str, Any]:
    group = await _path_group(call)
    row = await issue_service.ignore_group(
        sessions=call.sessions, group_id=group.id, pubsub=call.runtime.pubsub
    )
    return group_out(row)


async def delete(call: Call) -> dict[str, Any]:
    group = await _own_group(call, call.path("error_group_id"))
    await issue_service.delete_group(
        sessions=call.sessions, group_id=group.id, pubsub=call.runtime.pubsub
    )
    return {"id": str(group.id), "deleted": True}


async def bulk(call: Call) -> dict[str, Any]:
    body = _validated(BulkIn, await call.body())
    sent = list(dict.fromkeys(str(value).strip() for value in body.error_group_ids))
    parsed: dict[str, int] = {}
    for text in sent:
        if (group_id := _as_id(text)) is not None:
            parsed[text] = group_id
    outcome = await issue_service.bulk_update_groups(
        sessions=call.sessions,
        ids=list(parsed.values()),
        action=body.action.upper(),  # type: ignore[arg-type]
        visible=frozenset({call.project_id}),
        pubsub=call.runtime.pubsub,
    )
    updated = set(outcome.updated)
    return {
        "action": body.action,
        "updated": [text for text in sent if parsed.get(text) in updated],
        "failed": [
            {"id": text, "reason": outcome.failed.get(parsed[text], "not found")}
            if text in parsed
            else {"id": text, "reason": "not found"}
            for text in sent
            if parsed.get(text) not in updated
        ],
    }


# --- Export and retention ------------------------------------------------------------


def _downloadable(spec: FilterIn | None) -> bool:
    """Whether a stored export can repeat the filter (it keeps group and time range)."""
    if spec is None:
        return True
    return not (spec.level or spec.environment or spec.release or spec.tags)


async def export(call: Call) -> dict[str, Any]:
    body = _validated(ExportIn, await call.body(optional=True))
    where = event_filter(call, body.filter)
    fmt: export_service.ExportFormat = "CSV" if body.format == "csv" else "JSON"
    inline = await export_service.export_inline(sessions=call.sessions, where=where, format=fmt)
    download_url = expires_at = None
    if _downloadable(body.filter):
        stored = await export_service.create_export_request(
            sessions=call.sessions, where=where, format=fmt
        )
        download_url = f"{call.runtime.settings.base_url()}/export/{stored.id}"
        expires_at = _iso(stored.expires_at)
    return {
        "format": body.format,
        "row_count": inline.row_count,
        "truncated": inline.truncated,
        "content": inline.content,
        "download_url": download_url,
        "expires_at": expires_at,
    }


def _retention_out(value: retention_service.Retention) -> dict[str, Any]:
    return {
        "days": value.days,
        "auto_export_before_cleanup": value.auto_export_before_cleanup,
        "export_destination": value.export_destination,
    }


async def get_retention(call: Call) -> dict[str, Any]:
    value = await retention_service.get_retention(
        sessions=call.sessions,
        project_id=call.project_id,
        default_days=call.runtime.settings.retention_days,
    )
    return _retention_out(value)


async def set_retention(call: Call) -> dict[str, Any]:
    body = _validated(RetentionIn, await call.body())
    value = await retention_service.set_retention(
        sessions=call.sessions,
        project_id=call.project_id,
        days=body.days,
        auto_export_before_cleanup=body.auto_export_before_cleanup,
        export_destination=body.export_destination,
        default_days=call.runtime.settings.retention_days,
    )
    return _retention_out(value)


# --- Routes --------------------------------------------------------------------------


def _capability(path: str, method: str, scope: str, handler: Handler) -> Route:
    # No `methods` on the route: the capability answers every method itself.
    return Route(BASE + path, Capability(method, scope, handler))


routes = [
    _capability("/capture", "POST", "ingest", capture),
    _capability("/message", "POST", "ingest", message),
    _capability("/list", "GET", "read", list_events),
    _capability("/search", "GET", "read", search_events),
    _capability("/get/{event_id}", "GET", "read", get_event),
    _capability("/groups", "GET", "read", list_groups),
    _capability("/group_detail/{error_group_id}", "GET", "read", group_detail),
    _capability("/events/{error_group_id}", "GET", "read", group_events),
    _capability("/resolve/{error_group_id}", "POST", "write", resolve),
    _capability("/unresolve/{error_group_id}", "POST", "write", unresolve),
    _capability("/ignore/{error_group_id}", "POST", "write", ignore),
    _capability("/delete/{error_group_id}", "DELETE", "write", delete),
    _capability("/bulk", "POST", "write", bulk),
    _capability("/export", "POST", "read", export),
    _capability("/retention/get", "GET", "read", get_retention),
    _capability("/retention/set", "PUT", "write", set_retention),
    Route(BASE, NoCapability()),
    Route(BASE + "/{rest:path}", NoCapability()),
]
