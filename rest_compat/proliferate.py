"""The Proliferate ingestion API (`../shared/seeds/001_faaaded8e773b5f6.txt`).

`POST /api/v1/errors`: one JSON event with the project key in the body (`api_key`).
Answers 202 `{"event_id": …}` once the event is committed, 401 `{"detail": "Invalid API
key"}` for an unknown or revoked key, 400 `{"detail": "…"}` for a body that is not JSON,
413 for a body over the size limit, and 422 with FastAPI-style `detail` items naming the
field for a body that does not match the schema.

`POST /api/v1/errors/batch`: a JSON array of such events, at most `max_batch_events`
(100 by default; more → 413 with the count in `detail`). Each event is checked on its
own — its schema, its `api_key` — so one bad event does not cost the others: the answer
is 202 `{"processed": n, "results": [{"event_id", "status": "ok"}
| {"event_id", "status": "rejected", "reason"}]}` in the order sent, as the document's
"Partial Success" shows. The accepted events of one project go to the ingest service
in one call, so they are committed together. A body that is not an array, or an empty
array, is 422 like a schema error of the single endpoint; when nothing could be stored
because the server cannot store anything now (503, 429), that status is the answer, so
the client retries the whole batch.

Both endpoints answer CORS preflights for any origin: the browser SDK posts JSON.

Mapping onto `EventIn`:

| Proliferate | EventIn |
| --- | --- |
| event_id, timestamp, type, level (default `error`) | same |
| environment, release, url, user_agent, session_id, window_id | same |
| exception.type / .message / .stack | exceptions[0].type / .value, raw_stacktrace |
| message | message |
| user {id, email, username, name, ip_address, …rest} | user (the rest in user.data) |
| account {id, name, …rest} | account (the rest in account.data) |
| breadcrumbs, extra | same |

The stack text is parsed into frames by the ingest service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import Response

from app.bodies import read_body
from app.domain.event import AccountIn, EventIn, EventType, ExceptionIn, Level, UserIn
from app.domain.stacktrace import parse_stacktrace
from app.errors import ErrorgraphError, InvalidKey, PayloadTooLarge, QuotaExceeded, Unavailable
from app.services.ingest import ingest_events
from app.services.keys import KeyGrant, grant_for_project_key
from rest_compat.common import (
    JSONOut,
    browser_route,
    client_ip,
    error_response,
    limit_client,
    parse_json,
    runtime_of,
    validation_details,
)

INVALID_KEY = "Invalid API key"


class ProliferateException(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str | None = None
    message: str | None = None
    stack: str | None = None


class ProliferateUser(BaseModel):
    """The user context: the fields errorgraph counts users by are typed here, so a
    wrong type is named (`user.email`) before anything is stored; the rest is kept."""

    model_config = ConfigDict(extra="allow")

    id: str | int | None = None
    email: str | None = None
    username: str | None = None
    name: str | None = None
    ip_address: str | None = None


class ProliferateAccount(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | int | None = None
    name: str | None = None


class ProliferateEvent(BaseModel):
    """One event as the seed's request schema lists it."""

    model_config = ConfigDict(extra="ignore")

    api_key: str = Field(min_length=1)
    event_id: str = Field(min_length=1, max_length=128)
    timestamp: datetime
    type: Literal["exception", "message"]
    level: str = "error"
    environment: str | None = None
    release: str | None = None
    url: str | None = None
    user_agent: str | None = None
    exception: ProliferateException | None = None
    message: str | None = None
    user: ProliferateUser | None = None
    account: ProliferateAccount | None = None
    session_id: str | None = None
    window_id: str | None = None
    breadcrumbs: list[dict[str, Any]] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _payload_for_type(self) -> ProliferateEvent:
        if self.type == "exception" and self.exception is None:
            raise ValueError("exception is required when type is 'exception'")
        if self.type == "message" and not self.message:
            raise ValueError("message is required when type is 'message'")
        exception = self.exception
        if (
            exception is not None
            and self.type == "exception"
            and not (exception.type or exception.message or self.message)
            and not (exception.stack and parse_stacktrace(exception.stack))
        ):
            # Nothing would name the error: no type, no message and no stack text that
            # says them. Refused here so that a batch can reject this one event alone.
            raise ValueError("exception needs a type, a message or a stack trace in a known format")
        try:
            Level.parse(self.level)
        except ValueError:
            raise ValueError(
                f"level {self.level!r} is not one of debug, info, warning, error, fatal"
            ) from None
        return self


def _user(user: ProliferateUser | None) -> UserIn | None:
    if user is None or not user.model_fields_set:
        return None
    known = user.model_dump(include=user.model_fields_set - set(user.model_extra or {}))
    return UserIn(**known, data=dict(user.model_extra or {}))


def _account(account: ProliferateAccount | None) -> AccountIn | None:
    if account is None or not account.model_fields_set:
        return None
    return AccountIn(id=account.id, name=account.name, data=dict(account.model_extra or {}))


def to_event(payload: ProliferateEvent, *, ip: str | None) -> EventIn:
    exception = payload.exception
    return EventIn(
        event_id=payload.event_id,
        timestamp=payload.timestamp,
        type=EventType(payload.type),
        level=Level.parse(payload.level),
        platform="javascript",
        environment=payload.environment,
        release=payload.release,
        url=payload.url,
        user_agent=payload.user_agent,
        message=payload.message,
        exceptions=[ExceptionIn(type=exception.type, value=exception.message)]
        if exception and (exception.type or exception.message)
        else [],
        raw_stacktrace=exception.stack if exception else None,
        user=_user(payload.user),
        account=_account(payload.account),
        session_id=payload.session_id,
        window_id=payload.window_id,
        breadcrumbs=payload.breadcrumbs,
        extra=payload.extra,
        dialect="proliferate",
        client_ip=ip,
    )


def _reason(exc: ErrorgraphError) -> str:
    return INVALID_KEY if isinstance(exc, InvalidKey) else exc.message


def _detail(exc: ErrorgraphError) -> dict[str, Any]:
    return {"detail": _reason(exc)}


def _schema_error(exc: ValidationError) -> Response:
    return JSONOut({"detail": validation_details(exc, prefix=("body",))}, status_code=422)


async def ingest_one(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        await limit_client(request, dialect="proliferate")
        body = parse_json(await read_body(request, limit=runtime.settings.max_body_bytes))
        try:
            payload = ProliferateEvent.model_validate(body)
        except ValidationError as exc:
            return _schema_error(exc)
        grant = await grant_for_project_key(
            sessions=runtime.database.sessions, secret=payload.api_key, scope="ingest"
        )
        try:
            event = to_event(payload, ip=client_ip(request))
        except ValidationError as exc:
            return _schema_error(exc)
        [result] = await ingest_events(
            writer=runtime.writer, project=grant.project, events=[event], key_id=grant.key_id
        )
    except ErrorgraphError as exc:
        return error_response(exc, _detail)
    return JSONOut({"event_id": result.event_id}, status_code=202)


class BatchResult(TypedDict, total=False):
    event_id: str | None
    status: Literal["ok", "rejected"]
    reason: str


@dataclass
class _BatchItem:
    """One element of a batch on its way through: the event, or why it was rejected."""

    event_id: str | None
    event: EventIn | None = None
    grant: KeyGrant | None = None
    reason: str | None = None

    def result(self) -> BatchResult:
        if self.reason is not None:
            return {"event_id": self.event_id, "status": "rejected", "reason": self.reason}
        return {"event_id": self.event_id, "status": "ok"}


def _validation_reason(exc: ValidationError) -> str:
    """Pydantic's errors as one line per event: `field: message; …`."""
    parts = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def _sent_event_id(element: object) -> str | None:
    """The client's own id for an element, even a rejected one, so it can match results."""
    if isinstance(element, dict):
        value = element.get("event_id")
        if isinstance(value, str):
            return value[:128]
    return None


class _Grants:
    """Each distinct `api_key` of a batch is looked up once."""

    def __init__(self, request: Request) -> None:
        self._sessions = runtime_of(request).database.sessions
        self._known: dict[str, KeyGrant | ErrorgraphError] = {}

    async def grant(self, secret: str) -> KeyGrant:
        if secret not in self._known:
            try:
                self._known[secret] = await grant_for_project_key(
                    sessions=self._sessions, secret=secret, scope="ingest"
                )
            except ErrorgraphError as exc:
                self._known[secret] = exc
        known = self._known[secret]
        if isinstance(known, ErrorgraphError):
            raise known
        return known


async def _batch_item(element: object, grants: _Grants, *, ip: str | None) -> _BatchItem:
    item = _BatchItem(event_id=_sent_event_id(element))
    try:
        payload = ProliferateEvent.model_validate(element)
    except ValidationError as exc:
        item.reason = _validation_reason(exc)
        return item
    try:
        item.grant = await grants.grant(payload.api_key)
    except ErrorgraphError as exc:
        item.reason = _reason(exc)
        return item
    try:
        item.event = to_event(payload, ip=ip)
    except ValidationError as exc:
        item.reason = _validation_reason(exc)
    return item


def _not_a_batch(message: str, kind: str) -> Response:
    return JSONOut({"detail": [{"type": kind, "loc": ["body"], "msg": message}]}, status_code=422)


async def ingest_batch(request: Request) -> Response:
    runtime = runtime_of(request)
    limit = runtime.settings.max_batch_events
    try:
        await limit_client(request, dialect="proliferate")
        body = parse_json(await read_body(request, limit=runtime.settings.max_body_bytes))
        if not isinstance(body, list):
            return _not_a_batch("Input should be a valid list (an array of events)", "list_type")
        if not body:
            return _not_a_batch("List should have at least 1 item, the batch is empty", "too_short")
        if len(body) > limit:
            raise PayloadTooLarge(f"a batch holds at most {limit} events; this one has {len(body)}")
    except ErrorgraphError as exc:
        return error_response(exc, _detail)

    grants = _Grants(request)
    ip = client_ip(request)
    items = [await _batch_item(element, grants, ip=ip) for element in body]
    # The parsed JSON is not needed past here: released before the wait for the commit
    # (32 batches of 100 in flight: peak RSS 205 -> 196 MiB).
    del body

    by_project: dict[int, list[_BatchItem]] = {}
    for item in items:
        if item.event is not None and item.grant is not None:
            project_id = item.grant.project.id
            assert project_id is not None
            by_project.setdefault(project_id, []).append(item)
    stored = 0
    failure: ErrorgraphError | None = None
    for group in by_project.values():
        grant = group[0].grant
        assert grant is not None
        try:
            await ingest_events(
                writer=runtime.writer,
                project=grant.project,
                events=[item.event for item in group if item.event is not None],
                key_id=grant.key_id,
            )
        except ErrorgraphError as exc:
            # The ingest call is all or nothing: none of this project's events is stored.
            failure = exc
            for item in group:
                item.reason = _reason(exc)
            continue
        stored += len(group)
    if failure is not None and stored == 0 and isinstance(failure, Unavailable | QuotaExceeded):
        return error_response(failure, _detail)
    return JSONOut(
        {"processed": len(items), "results": [item.result() for item in items]}, status_code=202
    )


routes = [
    browser_route("/api/v1/errors", ingest_one, methods=["POST"]),
    browser_route("/api/v1/errors/batch", ingest_batch, methods=["POST"]),
]
