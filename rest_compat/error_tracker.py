"""The Error Tracker API (`../shared/seeds/003_5d6793c66178ddef.txt`).

| method and path | answer |
| --- | --- |
| `POST /api/errors` | 201 `{"status": "created", "fingerprint", "id"}` (new error), |
| | 200 `{"status": "existing", "fingerprint", "count"}` (known; a resolved one reopens) |
| `GET /api/errors` | `{"errors": [...], "total", "limit", "offset"}`, latest `last_seen` first |
| `GET /api/errors/{id}` | `{"error": {...}, "occurrences": [the latest 5, newest first]}` |
| `POST /api/errors/{id}/resolve` | `{"status": "resolved"}` |
| `GET /api/projects` | `{"projects": [names of projects with at least one error, sorted]}` |
| `GET /health` | `{"status": "ok"}` (served by `app.main`, no key needed) |

An "error" of the document is an errorgraph group (issue) and an "occurrence" is an
event; all reads and changes go through the same services as the GraphQL API.

Keys, in `X-API-Key`:

- the server-wide key (`API_KEY`, or `ERRORGRAPH_API_KEY`): the body's `project` names
  the project, created on first use with the `location` grouping strategy, so that the
  fingerprint is the document's MD5 of `{project}:{exception_type}:{file}:{line}` (file
  and line of the innermost frame parsed from `traceback`; without a parsable traceback,
  `{project}:{exception_type}:{normalised message}`). It reads and resolves everything.
- an errorgraph project key: reports go to the key's own project (a `project` in the
  body must then be that project's name or slug, else 403); its fingerprints follow the
  project's grouping strategy. Reading needs the `read` scope and resolving `write`; an
  ingest key may only report.

Errors: the document shows no error bodies, so they take the form errorgraph's other
dialects use, FastAPI's `{"detail": …}`: 401 missing or invalid key, 403 a key without
the scope or of another project, 404 unknown error id, 400 a body that is not JSON (or
not UTF-8), 413 a body over 256 KB (the document's limit, or `ERRORGRAPH_MAX_BODY_BYTES`
when lower; gzip, deflate and br bodies are decoded within the same limit), 422 a body
or query parameter of the wrong type or missing, or JSON nested deeper than 64 levels,
with `detail` items naming it (`["body", "exception_type"]`). Nothing is stored before a
report passed every check. `limit` above 200 is served as 200; below 1 is 422.

Rate limits: the document's 100 requests a minute per client address hold for every
endpoint above (the `error_tracker` entry of `ERRORGRAPH_CLIENT_RATE_LIMITS` changes it;
clients batching behind one address may need more), answered 429 `{"detail": …}` with
`Retry-After`; so do the quotas of a project key (see `app.services.quotas`).

Mapping onto `EventIn` (`dialect="error_tracker"`, type `exception`, level `error`):

| Error Tracker | EventIn |
| --- | --- |
| project | which project (see above) |
| environment | environment |
| exception_type, message | exceptions[0].type, .value |
| traceback | raw_stacktrace (parsed into frames by the ingest service) |
| request_url | url and request.url |
| request_method, request_headers | request.method, request.headers |
| user_id (string or number) | user.id |
| extra (object) | extra |
| source (`browser`, `server`, …; default `server`) | tags.source |

Reading back: an error's `project` is its project's name, `message` its first
occurrence's, `traceback` its latest occurrence's, and in lists `environment` its latest
occurrence's (or the one filtered by); an occurrence's `request_headers` and `extra` are
JSON text, as the document's schema stores them. `search` matches words (as prefixes)
of the exception type, message and stack trace; `resolved=false` lists every error that
is not resolved.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any, TypedDict

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.domain.event import EventIn, EventType, ExceptionIn, Level, UserIn
from app.errors import ErrorgraphError, Forbidden, InvalidKey, NotFound
from app.services.events import EventFilter, latest_events_by_group, list_events
from app.services.ingest import ingest_events
from app.services.issues import (
    GroupFilter,
    count_groups,
    get_group,
    list_groups_at_offset,
    resolve_group,
)
from app.services.keys import (
    KeyGrant,
    grant_for_project_key,
    list_projects,
    project_by_name,
    project_for_name,
)
from rest_compat.common import (
    JSONOut,
    browser_route,
    client_ip,
    error_response,
    limit_client,
    parse_json,
    query_pairs,
    read_decoded_body,
    runtime_of,
    validation_details,
)

DIALECT = "error_tracker"
# "256KB max request body" (the document's rate limits section).
MAX_BODY_BYTES = 256 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
OCCURRENCES = 5
# What a report without `source` is filtered as: backends send none (the document's
# example has none), and `server` is how the tracker's own UI names the non-browser side.
DEFAULT_SOURCE = "server"
# Projects created on first use hash like the service they replace.
FIRST_USE_STRATEGY = "location"
# Ids beyond a signed 64-bit integer cannot exist, and would overflow the driver.
MAX_ID = 2**63 - 1
MAX_OFFSET = 2**31 - 1
# JSON nesting in `extra` and `request_headers`: storing deeper data recurses past
# Python's limit, so it is refused before anything walks it.
MAX_JSON_DEPTH = 64


class ErrorReport(BaseModel):
    """The body of `POST /api/errors`, as the document's example shows it (plus `source`,
    which its list filters by). Types are checked, not coerced: a number where text is
    expected is a 422, not a silently different value."""

    model_config = ConfigDict(extra="ignore")

    project: StrictStr | None = Field(default=None, max_length=200)
    environment: StrictStr | None = None
    exception_type: StrictStr
    message: StrictStr | None = None
    traceback: StrictStr | None = None
    request_url: StrictStr | None = None
    request_method: StrictStr | None = None
    request_headers: dict[str, Any] | None = None
    user_id: StrictStr | StrictInt | None = None
    extra: dict[str, Any] | None = None
    source: StrictStr | None = None

    @field_validator("project", "exception_type")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.replace("\x00", "").strip()
        if not value:
            raise ValueError("must not be empty")
        return value


class ListQuery(BaseModel):
    """The query of `GET /api/errors`; empty parameters count as absent."""

    model_config = ConfigDict(extra="ignore")

    project: str | None = None
    environment: str | None = None
    resolved: bool | None = None
    search: str | None = None
    source: str | None = None
    limit: int = Field(default=DEFAULT_LIMIT, ge=1)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class ErrorSummary(TypedDict):
    id: int
    fingerprint: str
    project: str
    environment: str | None
    exception_type: str | None
    message: str
    count: int
    first_seen: str
    last_seen: str
    resolved: bool


class Occurrence(TypedDict):
    id: int
    timestamp: str
    request_url: str | None
    request_method: str | None
    request_headers: str | None
    user_id: str | None
    extra: str | None


# --- answers ---------------------------------------------------------------------------


def _fail(exc: ErrorgraphError) -> Response:
    return error_response(exc)


def _unprocessable(details: list[dict[str, Any]]) -> Response:
    return JSONOut({"detail": details}, status_code=422)


def _too_deep(body: Any) -> list[dict[str, Any]]:
    """A 422 item for each top-level field nested deeper than MAX_JSON_DEPTH, found
    without recursion (the body is at most 256 KB, so this walk is bounded)."""
    if not isinstance(body, dict):
        return []
    found = []
    for name, value in body.items():
        pending = [(value, 1)]
        while pending:
            item, depth = pending.pop()
            if depth > MAX_JSON_DEPTH:
                found.append(
                    {
                        "type": "too_deep",
                        "loc": ["body", name],
                        "msg": f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                    }
                )
                break
            if isinstance(item, dict):
                pending.extend((child, depth + 1) for child in item.values())
            elif isinstance(item, list):
                pending.extend((child, depth + 1) for child in item)
    return found


def _timestamp(value: datetime) -> str:
    """The document's form, `2026-01-01T00:00:00Z`."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_text(value: Any) -> str | None:
    """The document's schema keeps headers and extra as JSON text, and answers with it."""
    return None if value is None else json.dumps(value, ensure_ascii=False)


# --- who is asking ---------------------------------------------------------------------


async def _caller(request: Request, scope: str) -> KeyGrant | None:
    """None for the server-wide key (every project), else the project key's grant."""
    runtime = runtime_of(request)
    secret = request.headers.get("x-api-key", "").strip()
    if not secret:
        raise InvalidKey("Missing API key: send it in the X-API-Key header")
    server_key = runtime.settings.api_key
    if server_key is not None and hmac.compare_digest(
        secret.encode(), server_key.get_secret_value().encode()
    ):
        return None
    try:
        return await grant_for_project_key(
            sessions=runtime.database.sessions, secret=secret, scope=scope
        )
    except InvalidKey:
        raise InvalidKey("Invalid API key") from None


def _visible(caller: KeyGrant | None) -> frozenset[int] | None:
    if caller is None:
        return None
    assert caller.project.id is not None
    return frozenset({caller.project.id})


def _error_id(request: Request) -> int:
    text = request.path_params["error_id"]
    if not text.isascii() or not text.isdigit() or int(text) > MAX_ID:
        raise NotFound("Error not found")
    return int(text)


async def _visible_group(request: Request, caller: KeyGrant | None) -> Any:
    """The group of the path's id, as NotFound when the caller may not see it."""
    visible = _visible(caller)
    try:
        group = await get_group(
            sessions=runtime_of(request).database.sessions, group_id=_error_id(request)
        )
    except NotFound:
        raise NotFound("Error not found") from None
    if visible is not None and group.project_id not in visible:
        raise NotFound("Error not found")
    return group


async def _project_names(request: Request, project_ids: set[int]) -> dict[int, str]:
    projects = await list_projects(
        sessions=runtime_of(request).database.sessions, project_ids=sorted(project_ids)
    )
    return {project.id: project.name for project in projects}


# --- POST /api/errors ------------------------------------------------------------------


def _request_context(report: ErrorReport) -> dict[str, Any] | None:
    request = {
        "url": report.request_url,
        "method": report.request_method,
        "headers": report.request_headers,
    }
    kept = {key: value for key, value in request.items() if value is not None}
    return kept or None


def to_event(report: ErrorReport, *, ip: str | None) -> EventIn:
    return EventIn(
        type=EventType.EXCEPTION,
        level=Level.ERROR,
        environment=report.environment,
        exceptions=[ExceptionIn(type=report.exception_type, value=report.message or None)],
        raw_stacktrace=report.traceback or None,
        url=report.request_url,
        request=_request_context(report),
        user=UserIn(id=str(report.user_id)) if report.user_id is not None else None,
        extra=report.extra or {},
        tags={"source": report.source or DEFAULT_SOURCE},
        dialect=DIALECT,
        client_ip=ip,
    )


async def _report_project(request: Request, caller: KeyGrant | None, report: ErrorReport) -> Any:
    sessions = runtime_of(request).database.sessions
    if caller is None:
        assert report.project is not None
        return await project_for_name(
            sessions=sessions, name=report.project, grouping_strategy=FIRST_USE_STRATEGY
        )
    project = caller.project
    if report.project is not None and report.project not in (project.name, project.slug):
        raise Forbidden(
            f"this key belongs to project {project.name!r}, not {report.project!r}; "
            "use the server API key to report to other projects"
        )
    return project


async def report_error(request: Request) -> Response:
    runtime = runtime_of(request)
    limit = min(MAX_BODY_BYTES, runtime.settings.max_body_bytes)
    try:
        await limit_client(request, dialect=DIALECT)
        raw = await read_decoded_body(request, limit=limit, decoded_limit=limit)
        caller = await _caller(request, "ingest")
        body = parse_json(raw)
        too_deep = _too_deep(body)
        if too_deep:
            return _unprocessable(too_deep)
        try:
            report = ErrorReport.model_validate(body)
        except ValidationError as exc:
            return _unprocessable(validation_details(exc, prefix=("body",)))
        if caller is None and report.project is None:
            return _unprocessable(
                [
                    {
                        "type": "missing",
                        "loc": ["body", "project"],
                        "msg": "Field required: the server API key reports to the project "
                        "the body names",
                    }
                ]
            )
        try:
            event = to_event(report, ip=client_ip(request))
        except ValidationError as exc:
            return _unprocessable(validation_details(exc, prefix=("body",)))
        project = await _report_project(request, caller, report)
        [result] = await ingest_events(
            writer=runtime.writer,
            project=project,
            events=[event],
            key_id=caller.key_id if caller is not None else None,
        )
        group = await get_group(sessions=runtime.database.sessions, group_id=result.group_id)
    except ErrorgraphError as exc:
        return _fail(exc)
    if result.status == "created":
        return JSONOut(
            {"status": "created", "fingerprint": group.fingerprint, "id": group.id},
            status_code=201,
        )
    return JSONOut({"status": "existing", "fingerprint": group.fingerprint, "count": group.count})


# --- GET /api/errors -------------------------------------------------------------------


def _list_query(request: Request) -> ListQuery:
    params = {
        name: value.replace("\x00", "") for name, value in query_pairs(request) if value.strip()
    }
    return ListQuery.model_validate(params)


async def _project_filter(
    request: Request, caller: KeyGrant | None, name: str | None
) -> tuple[int | None, bool]:
    """The project id a `project=` filter means, and False when it names none visible."""
    if name is None:
        return None, True
    if caller is not None:
        project = caller.project
        return project.id, name in (project.name, project.slug)
    try:
        project = await project_by_name(sessions=runtime_of(request).database.sessions, name=name)
    except NotFound:
        return None, False
    return project.id, True


async def list_errors(request: Request) -> Response:
    sessions = runtime_of(request).database.sessions
    try:
        await limit_client(request, dialect=DIALECT)
        caller = await _caller(request, "read")
        try:
            query = _list_query(request)
        except ValidationError as exc:
            return _unprocessable(validation_details(exc, prefix=("query",)))
        limit = min(query.limit, MAX_LIMIT)
        project_id, matches = await _project_filter(request, caller, query.project)
        if not matches:
            return JSONOut({"errors": [], "total": 0, "limit": limit, "offset": query.offset})
        where = GroupFilter(
            visible=_visible(caller),
            project_id=project_id,
            status="resolved" if query.resolved is True else None,
            exclude_status="resolved" if query.resolved is False else None,
            environment=query.environment,
            search=query.search,
            tags=(("source", query.source),) if query.source else (),
        )
        groups = await list_groups_at_offset(
            sessions=sessions, where=where, limit=limit, offset=query.offset
        )
        total = await count_groups(sessions=sessions, where=where)
        names = await _project_names(request, {group.project_id for group in groups})
        latest = (
            {}
            if query.environment
            else await latest_events_by_group(
                sessions=sessions, group_ids=[group.id for group in groups]
            )
        )
    except ErrorgraphError as exc:
        return _fail(exc)
    errors: list[ErrorSummary] = []
    for group in groups:
        newest = latest.get(group.id)
        errors.append(
            {
                "id": group.id,
                "fingerprint": group.fingerprint,
                "project": names.get(group.project_id, ""),
                "environment": query.environment
                or (newest.environment if newest is not None else None),
                "exception_type": group.exception_type,
                "message": group.message or "",
                "count": group.count,
                "first_seen": _timestamp(group.first_seen),
                "last_seen": _timestamp(group.last_seen),
                "resolved": group.status == "resolved",
            }
        )
    return JSONOut({"errors": errors, "total": total, "limit": limit, "offset": query.offset})


# --- GET /api/errors/{id} --------------------------------------------------------------


def _occurrence(event: Any) -> Occurrence:
    request = event.request or {}
    user = event.user or {}
    return {
        "id": event.id,
        "timestamp": _timestamp(event.timestamp),
        "request_url": event.url or request.get("url"),
        "request_method": request.get("method"),
        "request_headers": _json_text(request.get("headers")),
        "user_id": user.get("id"),
        "extra": _json_text(event.extra) if event.extra else None,
    }


async def error_detail(request: Request) -> Response:
    sessions = runtime_of(request).database.sessions
    try:
        await limit_client(request, dialect=DIALECT)
        caller = await _caller(request, "read")
        group = await _visible_group(request, caller)
        page = await list_events(
            sessions=sessions,
            where=EventFilter(visible=_visible(caller), group_id=group.id),
            first=OCCURRENCES,
        )
        names = await _project_names(request, {group.project_id})
    except ErrorgraphError as exc:
        return _fail(exc)
    newest = page.items[0] if page.items else None
    error = {
        "id": group.id,
        "fingerprint": group.fingerprint,
        "project": names.get(group.project_id, ""),
        "exception_type": group.exception_type,
        "message": group.message or "",
        "traceback": newest.raw_stacktrace if newest is not None else None,
        "count": group.count,
        "first_seen": _timestamp(group.first_seen),
        "last_seen": _timestamp(group.last_seen),
        "resolved": group.status == "resolved",
    }
    return JSONOut({"error": error, "occurrences": [_occurrence(e) for e in page.items]})


# --- POST /api/errors/{id}/resolve -----------------------------------------------------


async def resolve_error(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        await limit_client(request, dialect=DIALECT)
        caller = await _caller(request, "write")
        group = await _visible_group(request, caller)
        await resolve_group(
            sessions=runtime.database.sessions, group_id=group.id, pubsub=runtime.pubsub
        )
    except ErrorgraphError as exc:
        return _fail(exc)
    return JSONOut({"status": "resolved"})


# --- GET /api/projects -----------------------------------------------------------------


async def project_names(request: Request) -> Response:
    sessions = runtime_of(request).database.sessions
    try:
        await limit_client(request, dialect=DIALECT)
        caller = await _caller(request, "read")
        visible = _visible(caller)
        projects = await list_projects(sessions=sessions, project_ids=visible)
        reported = set()
        for project in projects:
            if await count_groups(sessions=sessions, where=GroupFilter(project_id=project.id)):
                reported.add(project.name)
    except ErrorgraphError as exc:
        return _fail(exc)
    return JSONOut({"projects": sorted(reported)})


routes = [
    # Browsers report errors too (with an ingest key: it can do nothing else), so the
    # report endpoint answers CORS preflights; reading stays same-origin.
    browser_route("/api/errors", report_error, methods=["POST"]),
    Route("/api/errors", list_errors, methods=["GET"]),
    Route("/api/errors/{error_id}", error_detail, methods=["GET"]),
    Route("/api/errors/{error_id}/resolve", resolve_error, methods=["POST"]),
    Route("/api/projects", project_names, methods=["GET"]),
]
