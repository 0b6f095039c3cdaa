"""The Proliferate ingestion API (`../shared/seeds/001_faaaded8e773b5f6.txt`).

`POST /api/v1/errors`: one JSON event with the project key in the body (`api_key`).
Answers 202 `{"event_id": …}` once the event is committed, 401 `{"detail": "Invalid API
key"}` for an unknown or revoked key, 400 `{"detail": "…"}` for a body that is not JSON,
413 for a body over the size limit, and 422 with FastAPI-style `detail` items naming the
field for a body that does not match the schema.

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

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.domain.event import AccountIn, EventIn, EventType, ExceptionIn, Level, UserIn
from app.errors import ErrorgraphError, InvalidKey
from app.services.ingest import ingest_events
from app.services.keys import grant_for_project_key
from rest_compat.common import (
    JSONOut,
    client_ip,
    error_response,
    parse_json,
    read_body,
    runtime_of,
    validation_details,
)

INVALID_KEY = "Invalid API key"


class ProliferateException(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str | None = None
    message: str | None = None
    stack: str | None = None


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
    user: dict[str, Any] | None = None
    account: dict[str, Any] | None = None
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
        try:
            Level.parse(self.level)
        except ValueError:
            raise ValueError(
                f"level {self.level!r} is not one of debug, info, warning, error, fatal"
            ) from None
        return self


def _user(data: dict[str, Any] | None) -> UserIn | None:
    if not data:
        return None
    known = {"id", "email", "username", "name", "ip_address"}
    rest = {key: value for key, value in data.items() if key not in known}
    return UserIn(**{key: data[key] for key in known if key in data}, data=rest)


def _account(data: dict[str, Any] | None) -> AccountIn | None:
    if not data:
        return None
    rest = {key: value for key, value in data.items() if key not in {"id", "name"}}
    return AccountIn(id=data.get("id"), name=data.get("name"), data=rest)


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


def _detail(exc: ErrorgraphError) -> dict[str, Any]:
    return {"detail": INVALID_KEY if isinstance(exc, InvalidKey) else exc.message}


async def ingest_one(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        body = parse_json(await read_body(request, limit=runtime.settings.max_body_bytes))
        try:
            payload = ProliferateEvent.model_validate(body)
        except ValidationError as exc:
            return JSONOut({"detail": validation_details(exc, prefix=("body",))}, status_code=422)
        grant = await grant_for_project_key(
            sessions=runtime.database.sessions, secret=payload.api_key, scope="ingest"
        )
        try:
            event = to_event(payload, ip=client_ip(request))
        except ValidationError as exc:
            return JSONOut({"detail": validation_details(exc, prefix=("body",))}, status_code=422)
        [result] = await ingest_events(writer=runtime.writer, project=grant.project, events=[event])
    except ErrorgraphError as exc:
        return error_response(exc, _detail)
    return JSONOut({"event_id": result.event_id}, status_code=202)


routes = [Route("/api/v1/errors", ingest_one, methods=["POST"])]
