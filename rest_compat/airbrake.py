"""Airbrake's notice API, version 3, which Errbit also speaks, so that applications with an
Airbrake notifier (airbrake-ruby, airbrake-js, gobrake, pybrake, Errbit's clients) only
need their host and project pointed at errorgraph.

`POST /api/v3/projects/{project_id}/notices`, the notice as JSON (Airbrake's "Create
notice v3" reference). The project key goes in the `key` query parameter or in
`Authorization: Bearer <key>` (when both are sent they must be the same key); any key of
the project with the `ingest` or `write` scope will do. Answers:

- `201 {"id": "<event_id>", "url": "<base_url>/#/issues/<group_id>"}` once the event is
  committed. Airbrake's `url` locates the error in its web app; ours opens the issue the
  notice was grouped into in the dashboard served at `/` (`base_url` is
  ERRORGRAPH_PUBLIC_URL when set, else the server's host and port), so the link a
  notifier logs leads somewhere a person can look.
- `401` without a key, with an unknown or revoked key, or with two different keys;
  `403` when the key's project is not the project in the URL (or the key may not
  ingest); `400` for a body that is not JSON or does not match the notice format, the
  message naming the field (`errors[0].backtrace[2].line`); `413` past the body limit
  (ERRORGRAPH_MAX_BODY_BYTES, 1 MiB by default; gzip, deflate and br bodies are
  decoded within it). Every error answers `{"message": "…"}`, the shape Airbrake's
  notifiers read and log; a `field` member names the offending field when there is one.
  The endpoint answers CORS preflights for any origin: airbrake-js posts from browsers.

Order of `errors`: Airbrake's notifiers send the error that was raised first and then
its causes, each the cause of the one before (airbrake-ruby unwinds `Exception#cause`,
gobrake and airbrake-js unwrap their causes the same way). EventIn's chain runs the
other way (root cause first, the surfacing error last), so `errors` is reversed:
`errors[0]` becomes the primary exception. Each backtrace lists the innermost frame
first, as Ruby, JavaScript and Go print them; EventIn wants the outermost first, so
each backtrace is reversed too.

Mapping of a notice onto `EventIn`:

| Airbrake notice | EventIn |
| --- | --- |
| errors[] (reversed) | exceptions[] |
| errors[].type / .message | exceptions[].type / .value |
| errors[].backtrace[] (reversed) | exceptions[].frames[] |
| backtrace file | frames[].filename and abs_path, as sent |
| backtrace line / column / function | frames[].lineno / colno / function |
| backtrace code {"<line>": text} | frames[].pre_context / context_line / post_context |
| file under /PROJECT_ROOT or [PROJECT_ROOT] | in_app true |
| file under /GEM_ROOT, [GEM_ROOT], node_modules, site-packages, gems | in_app false |
| context.environment | environment |
| context.version | release |
| context.severity (`notice`, `critical`, `alert`, `emergency` too) | level (error when absent) |
| context.url / userAgent | url / user_agent; request {url, method: context.httpMethod} |
| context.user {id, email, name, username, …} | user (the rest in user.data) |
| context.userAddr | user.ip_address |
| context.component, context.action | transaction `component#action` (else either, else route) |
| context.hostname | server_name |
| context.language (`Ruby 3.3.0`, `go1.22`) | platform (first word, lower case); contexts.runtime |
| context.os | contexts.os.name |
| context.notifier {name, version, url} | contexts.notifier |
| the rest of context (rootDirectory, remoteAddr, revision, …) | contexts.airbrake |
| params | extra.params |
| session | extra.session |
| environment (the process's variables) | extra.environment |
| — | dialect `airbrake`, client_ip the peer address, event_id new, timestamp now |

A notice needs at least one error with a type or a message. Unknown members are ignored,
as Airbrake does.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import Response

from app.domain.event import EventIn, EventType, ExceptionIn, Frame, Level, UserIn
from app.errors import ErrorgraphError, Forbidden, InvalidInput, InvalidKey, QuotaExceeded
from app.services.ingest import ingest_events
from app.services.keys import KeyGrant, grant_for_project_key
from rest_compat.common import (
    JSONOut,
    browser_route,
    client_ip,
    error_response,
    limit_client,
    parse_json,
    read_decoded_body,
    runtime_of,
)

# Airbrake's severities beyond the ones `Level.parse` reads.
_SEVERITIES = {"alert": Level.FATAL, "emergency": Level.FATAL, "invalid": Level.ERROR}
_IN_APP_ROOTS = ("/PROJECT_ROOT", "[PROJECT_ROOT]")
_LIBRARY = re.compile(
    r"^(?:/GEM_ROOT|\[GEM_ROOT\])|node_modules|site-packages|dist-packages|/gems/|vendor/bundle"
)
# The context members mapped onto EventIn fields; the others are kept in contexts.airbrake.
_MAPPED_CONTEXT = frozenset(
    {
        "environment",
        "version",
        "severity",
        "url",
        "userAgent",
        "user",
        "userAddr",
        "component",
        "action",
        "route",
        "httpMethod",
        "hostname",
        "language",
        "os",
        "notifier",
    }
)


class AirbrakeFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")

    file: str | None = None
    line: int | None = None
    column: int | None = None
    function: str | None = None
    code: dict[str, str | None] | None = None


class AirbrakeError(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str | None = None
    message: str | None = None
    backtrace: list[AirbrakeFrame] | None = None


class AirbrakeUser(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | int | None = None
    email: str | None = None
    name: str | None = None
    username: str | None = None


class AirbrakeContext(BaseModel):
    """The members errorgraph reads are typed, so a wrong type is named; others are kept."""

    model_config = ConfigDict(extra="allow")

    environment: str | None = None
    version: str | None = None
    severity: str | None = None
    url: str | None = None
    user_agent: str | None = Field(default=None, alias="userAgent")
    user: AirbrakeUser | None = None
    user_addr: str | None = Field(default=None, alias="userAddr")
    component: str | None = None
    action: str | None = None
    route: str | None = None
    http_method: str | None = Field(default=None, alias="httpMethod")
    hostname: str | None = None
    language: str | None = None
    os: str | None = None
    notifier: dict[str, Any] | None = None


class AirbrakeNotice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    errors: list[AirbrakeError] = Field(min_length=1)
    context: AirbrakeContext | None = None
    environment: dict[str, Any] | None = None
    session: dict[str, Any] | None = None
    params: dict[str, Any] | None = None

    @field_validator("errors", mode="after")
    @classmethod
    def _something_named(cls, errors: list[AirbrakeError]) -> list[AirbrakeError]:
        if not any(error.type or error.message for error in errors):
            raise ValueError("at least one error needs a type or a message")
        return errors


def _field_name(loc: tuple[str | int, ...]) -> str:
    """Pydantic's location as a path a reader of the notice recognises: errors[0].type."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _invalid(exc: ValidationError) -> InvalidInput:
    error = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    where = _field_name(tuple(error["loc"]))
    return InvalidInput(f"{where}: {error['msg']}", field=where)


def _level(severity: str | None) -> Level:
    if severity is None:
        return Level.ERROR
    text = severity.strip().lower()
    if text in _SEVERITIES:
        return _SEVERITIES[text]
    try:
        return Level.parse(text)
    except ValueError:
        raise InvalidInput(
            f"context.severity: {severity!r} is not an Airbrake severity", field="context.severity"
        ) from None


def _in_app(file: str | None) -> bool | None:
    """Airbrake's notifiers replace the application's root with PROJECT_ROOT and the gem
    root with GEM_ROOT; other paths are left for grouping's own rules."""
    if not file:
        return None
    if file.startswith(_IN_APP_ROOTS):
        return True
    if _LIBRARY.search(file):
        return False
    return None


def _context_lines(code: dict[str, str | None] | None, line: int | None) -> dict[str, Any]:
    """The code hunk (`{"41": "…", "42": "…"}`) around `line`, as context lines."""
    if not code or line is None:
        return {}
    numbered = sorted(
        (int(number), text or "") for number, text in code.items() if number.strip().isdigit()
    )
    if not any(number == line for number, _ in numbered):
        return {}
    return {
        "pre_context": [text for number, text in numbered if number < line][-50:],
        "context_line": next(text for number, text in numbered if number == line),
        "post_context": [text for number, text in numbered if number > line][:50],
    }


def _frame(frame: AirbrakeFrame) -> Frame:
    return Frame(
        filename=frame.file or None,
        abs_path=frame.file or None,
        function=frame.function or None,
        lineno=frame.line,
        colno=frame.column,
        in_app=_in_app(frame.file),
        **_context_lines(frame.code, frame.line),
    )


def _user(context: AirbrakeContext) -> UserIn | None:
    user = context.user
    if user is None or not user.model_fields_set:
        return UserIn(ip_address=context.user_addr) if context.user_addr else None
    known = user.model_dump(include=user.model_fields_set - set(user.model_extra or {}))
    return UserIn(**known, ip_address=context.user_addr, data=dict(user.model_extra or {}))


def _transaction(context: AirbrakeContext) -> str | None:
    if context.component and context.action:
        return f"{context.component}#{context.action}"
    return context.component or context.action or context.route


def _platform(language: str | None) -> str | None:
    match = re.match(r"[A-Za-z][A-Za-z#+]*", (language or "").strip())
    return match.group(0).lower() if match else None


def _contexts(context: AirbrakeContext) -> dict[str, Any]:
    contexts: dict[str, Any] = {}
    if context.language:
        contexts["runtime"] = {"name": context.language}
    if context.os:
        contexts["os"] = {"name": context.os}
    if context.notifier:
        contexts["notifier"] = context.notifier
    rest = {k: v for k, v in (context.model_extra or {}).items() if k not in _MAPPED_CONTEXT}
    if rest:
        contexts["airbrake"] = rest
    return contexts


def event_from_notice(notice: AirbrakeNotice, *, ip: str | None) -> EventIn:
    """The notice as one canonical event (see the module docstring for the mapping)."""
    context = notice.context or AirbrakeContext()
    exceptions = [
        ExceptionIn(
            type=error.type or None,
            value=error.message or None,
            frames=[_frame(frame) for frame in reversed(error.backtrace or [])],
        )
        for error in reversed(notice.errors)
    ]
    request = {
        key: value
        for key, value in (("url", context.url), ("method", context.http_method))
        if value is not None
    }
    extra = {
        key: value
        for key, value in (
            ("params", notice.params),
            ("session", notice.session),
            ("environment", notice.environment),
        )
        if value
    }
    return EventIn(
        type=EventType.EXCEPTION,
        level=_level(context.severity),
        platform=_platform(context.language),
        environment=context.environment,
        release=context.version,
        server_name=context.hostname,
        transaction=_transaction(context),
        exceptions=exceptions,
        url=context.url,
        user_agent=context.user_agent,
        request=request or None,
        user=_user(context),
        contexts=_contexts(context),
        extra=extra,
        dialect="airbrake",
        client_ip=ip,
    )


def _keys(request: Request) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if query_key := request.query_params.get("key", "").strip():
        found.append(("the key query parameter", query_key))
    scheme, _, rest = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        found.append(("Authorization", rest.strip()))
    return found


def _one_key(found: list[tuple[str, str]]) -> str | None:
    """The key, when both places that may carry one carry the same: a request with two
    different keys cannot be attributed to either."""
    keys = {key for _, key in found}
    if len(keys) > 1:
        raise InvalidKey(f"the keys in {found[0][0]} and {found[1][0]} differ")
    return found[0][1] if found else None


async def _grant(request: Request) -> KeyGrant:
    key = _one_key(_keys(request))
    if key is None:
        raise InvalidKey(
            "no project key: send it as the key query parameter or as Authorization: Bearer"
        )
    project_id: int = request.path_params["project_id"]
    grant = await grant_for_project_key(
        sessions=runtime_of(request).database.sessions, secret=key, scope="ingest"
    )
    if grant.project.id != project_id:
        raise Forbidden(f"this key does not belong to project {project_id}", field="project_id")
    return grant


def _message(exc: ErrorgraphError) -> dict[str, Any]:
    body: dict[str, Any] = {"message": exc.message}
    if exc.field:
        body["field"] = exc.field
    return body


def _answer_error(exc: ErrorgraphError) -> Response:
    response = error_response(exc, _message)
    if isinstance(exc, QuotaExceeded):
        # airbrake-ruby waits this many seconds before sending again.
        response.headers["X-RateLimit-Delay"] = str(exc.retry_after)
    return response


async def create_notice(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        await limit_client(request, dialect="airbrake")
        grant = await _grant(request)
        limit = runtime.settings.max_body_bytes
        body = parse_json(await read_decoded_body(request, limit=limit, decoded_limit=limit))
        try:
            notice = AirbrakeNotice.model_validate(body)
            event = event_from_notice(notice, ip=client_ip(request))
        except ValidationError as exc:
            raise _invalid(exc) from None
        [result] = await ingest_events(
            writer=runtime.writer, project=grant.project, events=[event], key_id=grant.key_id
        )
    except ErrorgraphError as exc:
        return _answer_error(exc)
    url = f"{runtime.settings.base_url().rstrip('/')}/#/issues/{result.group_id}"
    return JSONOut({"id": result.event_id, "url": url}, status_code=201)


routes = [
    browser_route("/api/v3/projects/{project_id:int}/notices", create_notice, methods=["POST"]),
]
