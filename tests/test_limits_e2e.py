"""Rate limits, quotas, body limits and scrubbing through every dialect, as clients meet
them: the ASGI app for the answers, real uvicorn for what needs a socket (a body that is
never sent, the Sentry SDK's backoff), and two processes sharing counters in Redis.

No test waits for a window to pass: each asserts what happens within one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
import uvicorn
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select, text
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from support import (
    ERRORGRAPH,
    GQL,
    AppClient,
    LiveServer,
    RedisServer,
    cli_env,
    free_port,
    running_server,
)

from app.config import Settings
from app.db import create_database, upgrade_database
from app.graphql.schema import MAX_GRAPHQL_BODY_BYTES
from app.main import create_app
from app.models import Event, LogMessage
from app.services.keys import CreatedProject, create_project, create_project_key
from rest_compat import (
    airbrake,
    error_tracker,
    errorstack,
    infrai,
    proliferate,
    retack,
    sentry,
    sourcemaps,
)

SECRET = "s3cr3t-Hunter2-value"
CARD = "4111 1111 1111 1111"
ADDRESS = "203.0.113.50"
MiB = 1024 * 1024

DIALECT_ROUTES: dict[str, list[Route]] = {
    "sentry": sentry.routes,
    "proliferate": proliferate.routes,
    "retack": retack.routes,
    "errorstack": errorstack.routes,
    "error_tracker": error_tracker.routes,
    "infrai": [route for route in infrai.routes if isinstance(route.app, infrai.Capability)],
    "airbrake": airbrake.routes,
}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def app_for(settings: Settings) -> AsyncIterator[Any]:
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        yield manager.app


def client_from(app: Any, address: str) -> httpx.AsyncClient:
    """A client whose requests come from `address`, as the limiter sees it."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def route_calls() -> list[tuple[str, str, str]]:
    """(dialect, method, path) for every endpoint of every dialect."""
    calls = []
    for dialect, routes in DIALECT_ROUTES.items():
        for route in routes:
            capability = route.app if isinstance(route.app, infrai.Capability) else None
            methods = capability.methods if capability else (route.methods or set())
            path = re.sub(r"\{[^}]+\}", "1", route.path_format)
            for method in sorted(methods - {"HEAD", "OPTIONS"}):
                calls.append((dialect, method, path))
    return calls


# --- per client address: every endpoint of every dialect ----------------------------


def assert_rate_limited(where: object, response: httpx.Response, dialect: str) -> None:
    assert response.status_code == 429, (where, response.status_code, response.text)
    assert 1 <= int(response.headers["retry-after"]) <= 60
    if dialect == "sentry":
        assert re.fullmatch(r"\d+::ip:ip_rate_limit", response.headers["x-sentry-rate-limits"])
    elif dialect == "infrai":
        assert response.json()["error"]["code"] == "RATE_LIMITED"
    elif dialect == "airbrake":
        assert "too many requests" in response.json()["message"]
        assert response.headers["x-ratelimit-delay"] == response.headers["retry-after"]
    else:
        assert "too many requests" in response.json()["detail"]


async def test_every_dialect_endpoint_counts_requests_per_address(settings: Settings):
    calls = route_calls()
    assert {dialect for dialect, _, _ in calls} == set(DIALECT_ROUTES)
    assert len(calls) >= 25
    limited = settings.model_copy(
        update={"client_rate_limits": {"default": "2/minute", "error_tracker": "2/minute"}}
    )
    async with app_for(limited) as app:
        for n, (dialect, method, path) in enumerate(calls):
            where = (dialect, method, path)
            async with client_from(app, f"10.0.0.{n + 1}") as http:
                # Unauthenticated or malformed, requests count all the same: someone
                # guessing keys is limited like anyone else.
                for _ in range(2):
                    answer = await http.request(method, path, params={"_r": "json"})
                    assert answer.status_code != 429, where
                refused = await http.request(method, path, params={"_r": "json"})
                assert_rate_limited(where, refused, dialect)
        # Every address had its own allowance, every dialect its own count.
        async with client_from(app, "10.0.0.1") as http:
            assert (await http.get("/api/errors")).status_code == 401


async def test_the_error_tracker_default_is_its_documents_100_a_minute(settings: Settings):
    async with app_for(settings) as app, client_from(app, "192.0.2.10") as http:
        for _ in range(100):
            assert (await http.get("/api/errors")).status_code == 401
        refused = await http.get("/api/errors")
        assert_rate_limited("error tracker", refused, "error_tracker")
        # Another dialect from the same address is not held back by it.
        assert (await http.post("/api/v1/errors", json={})).status_code == 422


async def test_cors_preflights_are_not_counted(settings: Settings):
    limited = settings.model_copy(update={"client_rate_limits": {"default": "1/minute"}})
    origin = {"Origin": "https://shop.test"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    async with app_for(limited) as app, client_from(app, "192.0.2.11") as http:
        for _ in range(3):
            assert (await http.options("/api/v1/errors", headers=preflight)).status_code == 200
        assert (await http.post("/api/v1/errors", json={}, headers=origin)).status_code == 422
        refused = await http.post("/api/v1/errors", json={}, headers=origin)
        assert refused.status_code == 429
        # A page may read the refusal: it carries the CORS header like any answer.
        assert refused.headers["access-control-allow-origin"] == "*"


# --- one sender per dialect, a secret in each place it carries -----------------------

Sender = Callable[[httpx.AsyncClient, CreatedProject, int], Awaitable[httpx.Response]]


def sentry_event(n: int) -> dict[str, Any]:
    """A secret in every place a Sentry event has for one."""
    return {
        "event_id": uuid.uuid4().hex,
        "platform": "python",
        "level": "error",
        "transaction": f"/pay?token={SECRET}",
        "exception": {
            "values": [
                {
                    "type": "PaymentError",
                    "value": f"gateway refused Authorization: Bearer {SECRET} ({n})",
                    "mechanism": {"type": "generic", "data": {"api_key": SECRET}},
                    "stacktrace": {
                        "frames": [
                            {
                                "function": "charge",
                                "filename": "shop/pay.py",
                                "module": "shop.pay",
                                "lineno": 31,
                                "in_app": True,
                                "context_line": f'    client = Gateway(secret="{SECRET}")',
                                "vars": {"password": SECRET, "card": CARD, "amount": 12},
                            }
                        ]
                    },
                }
            ]
        },
        "request": {
            "url": f"https://shop.test/pay?token={SECRET}",
            "method": "POST",
            "query_string": f"step=2&api_key={SECRET}",
            "headers": {"Authorization": f"Bearer {SECRET}", "X-Forwarded-For": ADDRESS},
            "cookies": {"sessionid": SECRET},
            "data": {"password": SECRET, "card_number": CARD},
            "env": {"REMOTE_ADDR": ADDRESS},
        },
        "user": {"id": "u-1", "ip_address": ADDRESS, "api_token": SECRET},
        "tags": {"auth_token": SECRET, "region": "eu"},
        "extra": {"config": {"db_password": SECRET}, "order_ref": "ORD-77"},
        "contexts": {"app": {"app_secret": SECRET}},
        "breadcrumbs": {
            "values": [
                {"category": "http", "message": f"GET /login?password={SECRET}"},
                {"category": "auth", "data": {"token": SECRET}},
            ]
        },
    }


async def send_sentry(http: httpx.AsyncClient, project: CreatedProject, n: int) -> httpx.Response:
    event = sentry_event(n)
    lines = [{"event_id": event["event_id"]}, {"type": "event"}, event]
    return await http.post(
        f"/api/{project.project.id}/envelope/",
        content=b"\n".join(json.dumps(line).encode() for line in lines),
        headers={
            "X-Sentry-Auth": f"Sentry sentry_key={project.ingest_key.secret}, sentry_version=7"
        },
    )


async def send_proliferate(
    http: httpx.AsyncClient, project: CreatedProject, n: int
) -> httpx.Response:
    return await http.post(
        "/api/v1/errors",
        json={
            "api_key": project.ingest_key.secret,
            "event_id": f"evt_{n}_{uuid.uuid4().hex[:8]}",
            "timestamp": "2026-03-01T12:00:00Z",
            "type": "exception",
            "url": f"https://shop.test/reset?token={SECRET}",
            "exception": {
                "type": "TypeError",
                "message": f"login {n} with password={SECRET} failed",
                "stack": "TypeError: x\n    at login (app.js:4:2)",
            },
            "user": {"id": "u-2", "password": SECRET},
            "breadcrumbs": [{"category": "auth", "message": f"token={SECRET}"}],
            "extra": {"credit_card": CARD},
        },
    )


async def send_retack(http: httpx.AsyncClient, project: CreatedProject, n: int) -> httpx.Response:
    return await http.post(
        "/observe/error-log/",
        json={
            "title": f"Login {n} failed for session_token={SECRET}",
            "stack_trace": 'File "app.py", line 3, in login\nValueError: bad',
            "password": SECRET,
        },
        headers={"ENV-KEY": project.ingest_key.secret, "X-User-Context": "device-9"},
    )


async def send_errorstack(
    http: httpx.AsyncClient, project: CreatedProject, n: int
) -> httpx.Response:
    return await http.post(
        f"/submit?_s={project.ingest_key.secret}&_r=json",
        data={
            "Msg": f"Uncaught Error: charge {n} failed with api_key={SECRET}",
            "URL": f"https://shop.test/?access_token={SECRET}",
            "api_key": SECRET,
            "Line": "12",
        },
    )


async def send_error_tracker(
    http: httpx.AsyncClient, project: CreatedProject, n: int
) -> httpx.Response:
    return await http.post(
        "/api/errors",
        json={
            "exception_type": f"AuthError{n}",
            "message": f"token refused: Bearer {SECRET}",
            "request_url": f"https://shop.test/cb?code=1&client_secret={SECRET}",
            "request_method": "GET",
            "request_headers": {"Authorization": f"Bearer {SECRET}", "Cookie": f"sid={SECRET}"},
            "extra": {"api_key": SECRET},
        },
        headers={"X-API-Key": project.ingest_key.secret},
    )


async def send_infrai(http: httpx.AsyncClient, project: CreatedProject, n: int) -> httpx.Response:
    return await http.post(
        "/v1/errors/capture",
        json={
            "message": f"sync {n} failed: postgres://app:{SECRET}@db/shop",
            "tags": {"session_token": SECRET, "job": "sync"},
        },
        headers={"Authorization": f"Bearer {project.ingest_key.secret}"},
    )


async def send_airbrake(http: httpx.AsyncClient, project: CreatedProject, n: int) -> httpx.Response:
    return await http.post(
        f"/api/v3/projects/{project.project.id}/notices",
        params={"key": project.ingest_key.secret},
        json={
            "errors": [
                {
                    "type": "AuthError",
                    "message": f"login {n} refused for password={SECRET}",
                    "backtrace": [
                        {"file": "/PROJECT_ROOT/app/auth.rb", "line": 7, "function": "login"}
                    ],
                }
            ],
            "context": {"url": f"https://shop.test/login?token={SECRET}", "severity": "error"},
            "params": {"password": SECRET, "card": CARD},
            "session": {"api_key": SECRET},
        },
    )


SENDERS: dict[str, Sender] = {
    "airbrake": send_airbrake,
    "sentry": send_sentry,
    "proliferate": send_proliferate,
    "retack": send_retack,
    "errorstack": send_errorstack,
    "error_tracker": send_error_tracker,
    "infrai": send_infrai,
}

UPDATE_SETTINGS = """
mutation ($p: ID!, $fields: [String!], $ips: Boolean, $pm: Int, $ph: Int) {
  updateProjectSettings(projectId: $p, scrubFields: $fields, scrubIpAddresses: $ips,
                        eventsPerMinute: $pm, eventsPerHour: $ph) {
    id scrubFields scrubIpAddresses eventsPerMinute eventsPerHour
  }
}"""

STORED = """
query ($p: ID!) {
  events(projectId: $p, first: 10) { edges { node {
    message rawStacktrace url transaction clientIp request breadcrumbs tags extra contexts
    userData accountData
    exception { type value mechanism frames { vars contextLine preContext postContext } }
  } } }
  groups(projectId: $p, first: 10) { edges { node { title culprit message } } }
}"""


async def raw_database(app_client: AppClient) -> bytes:
    """The SQLite file's bytes, with everything committed moved into it from the WAL."""
    path = app_client.runtime.settings.sqlite_path
    assert path is not None
    async with app_client.runtime.database.engine.connect() as conn:
        await conn.execute(text("PRAGMA wal_checkpoint(FULL)"))
    return path.read_bytes()


async def stored_through_graphql(gql: GQL, project: CreatedProject) -> dict[str, Any]:
    return await gql(STORED, {"p": str(project.project.id)})


async def assert_nothing_secret_stored(
    app_client: AppClient, gql: GQL, project: CreatedProject
) -> dict[str, Any]:
    raw = await raw_database(app_client)
    assert SECRET.encode() not in raw
    assert CARD.encode() not in raw and CARD.replace(" ", "").encode() not in raw
    stored = await stored_through_graphql(gql, project)
    dumped = json.dumps(stored)
    assert SECRET not in dumped and CARD not in dumped
    assert "[Filtered]" in dumped
    assert stored["events"]["edges"], "the event was stored"
    return stored


@pytest.mark.parametrize("dialect", sorted(SENDERS))
async def test_each_dialect_stores_no_secret(app_client, app_project, gql, dialect):
    response = await SENDERS[dialect](app_client.http, app_project, 1)
    assert response.status_code < 300, response.text
    await assert_nothing_secret_stored(app_client, gql, app_project)


async def test_every_place_of_a_sentry_event(app_client, app_project, gql):
    await send_sentry(app_client.http, app_project, 1)
    stored = await assert_nothing_secret_stored(app_client, gql, app_project)
    event = stored["events"]["edges"][0]["node"]
    filtered = "[Filtered]"
    assert event["request"]["data"] == {"password": filtered, "card_number": filtered}
    assert event["request"]["headers"]["Authorization"] == filtered
    assert event["request"]["query_string"] == f"step=2&api_key={filtered}"
    assert event["request"]["cookies"] == filtered
    assert event["extra"] == {"config": {"db_password": filtered}, "order_ref": "ORD-77"}
    assert event["breadcrumbs"][0]["message"] == f"GET /login?password={filtered}"
    assert event["breadcrumbs"][1]["data"] == {"token": filtered}
    assert event["contexts"]["app"] == {"app_secret": filtered}
    assert event["userData"]["data"] == {"api_token": filtered}
    assert event["tags"]["auth_token"] == filtered and event["tags"]["region"] == "eu"
    frame = event["exception"][0]["frames"][0]
    assert frame["vars"] == {"password": filtered, "card": filtered, "amount": 12}
    assert event["exception"][0]["mechanism"]["data"] == {"api_key": filtered}
    assert event["transaction"] == f"/pay?token={filtered}"
    # Addresses are kept unless the project says otherwise.
    assert event["clientIp"] == "127.0.0.1" and event["userData"]["ip_address"] == ADDRESS


async def test_graphql_capture_stores_no_secret(app_client, app_project, gql):
    await gql(
        """mutation ($p: ID!, $m: String!, $extra: JSON) {
             captureMessage(input: {projectId: $p, message: $m, extra: $extra}) { eventId }
           }""",
        {
            "p": str(app_project.project.id),
            "m": f"reset with token={SECRET}",
            "extra": {"secret": SECRET, "n": 1},
        },
    )
    await assert_nothing_secret_stored(app_client, gql, app_project)


async def test_errorstack_log_messages_are_scrubbed(app_client, app_project):
    response = await app_client.http.post(
        f"/log?_s={app_project.ingest_key.secret}&_r=json",
        data={"Msg": f"cron login password={SECRET}", "token": SECRET, "job": "nightly"},
    )
    assert response.status_code == 200, response.text
    assert SECRET.encode() not in await raw_database(app_client)
    async with app_client.runtime.database.sessions() as session:
        [row] = (await session.scalars(select(LogMessage))).all()
    assert row.message == "cron login password=[Filtered]"
    assert row.data == {"token": "[Filtered]", "job": "nightly"}


async def test_project_settings_add_fields_and_drop_addresses(app_client, app_project, gql):
    project_id = str(app_project.project.id)
    updated = await gql(UPDATE_SETTINGS, {"p": project_id, "fields": ["order_ref"], "ips": True})
    assert updated["updateProjectSettings"] == {
        "id": project_id,
        "scrubFields": ["order_ref"],
        "scrubIpAddresses": True,
        "eventsPerMinute": None,
        "eventsPerHour": None,
    }
    await send_sentry(app_client.http, app_project, 1)
    raw = await raw_database(app_client)
    assert b"ORD-77" not in raw
    assert ADDRESS.encode() not in raw and b"127.0.0.1" not in raw
    event = (await stored_through_graphql(gql, app_project))["events"]["edges"][0]["node"]
    assert event["extra"]["order_ref"] == "[Filtered]"
    assert event["clientIp"] is None and "ip_address" not in event["userData"]
    assert "X-Forwarded-For" not in event["request"]["headers"]
    # Arguments left out stay; the project reads back the same way.
    again = await gql(UPDATE_SETTINGS, {"p": project_id, "pm": 100})
    assert again["updateProjectSettings"]["scrubFields"] == ["order_ref"]
    assert again["updateProjectSettings"]["scrubIpAddresses"] is True
    read = await gql(
        "query ($p: ID!) { project(id: $p) { scrubFields scrubIpAddresses eventsPerMinute } }",
        {"p": project_id},
    )
    assert read["project"] == {
        "scrubFields": ["order_ref"],
        "scrubIpAddresses": True,
        "eventsPerMinute": 100,
    }


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"pm": -1}, "eventsPerMinute"),
        ({"ph": 2_000_000_000}, "eventsPerHour"),
        ({"fields": ["---"]}, "scrubFields"),
        ({"ips": None}, "scrubIpAddresses"),
    ],
)
async def test_bad_project_settings_name_the_argument(gql, app_project, variables, field):
    error = await gql.error(UPDATE_SETTINGS, {"p": str(app_project.project.id), **variables})
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": field}


async def test_project_settings_need_an_admin_token(app_client, app_project, gql):
    error = await gql.error(
        UPDATE_SETTINGS, {"p": str(app_project.project.id), "pm": 1}, token=None
    )
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    other = await create_project(sessions=app_client.runtime.database.sessions, name="Other")
    error = await gql.error(UPDATE_SETTINGS, {"p": str(other.project.id), "pm": 1})
    assert error["extensions"]["code"] == "FORBIDDEN"


# --- per project key ------------------------------------------------------------------


@pytest.mark.parametrize("dialect", sorted(SENDERS))
async def test_each_dialect_answers_429_past_the_key_quota(app_client, app_project, gql, dialect):
    await gql(UPDATE_SETTINGS, {"p": str(app_project.project.id), "pm": 1})
    send = SENDERS[dialect]
    assert (await send(app_client.http, app_project, 1)).status_code < 300
    refused = await send(app_client.http, app_project, 2)
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    if dialect == "sentry":
        assert re.fullmatch(
            r"\d+:default;error:key:key_quota", refused.headers["x-sentry-rate-limits"]
        )
    elif dialect == "infrai":
        assert refused.json()["error"]["code"] == "RATE_LIMITED"
    else:
        assert "over quota: this project key may send 1 events per minute" in refused.text
    async with app_client.runtime.database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Event)) == 1
    # Another key of the project has its own allowance.
    other_key = await create_project_key(
        sessions=app_client.runtime.database.sessions,
        project_id=app_project.project.id,
        scopes=["ingest"],
    )
    with_other_key = dataclasses.replace(app_project, ingest_key=other_key)
    assert (await send(app_client.http, with_other_key, 3)).status_code < 300


async def test_graphql_capture_counts_against_the_project(gql, app_project):
    await gql(UPDATE_SETTINGS, {"p": str(app_project.project.id), "pm": 1})
    capture = """mutation ($p: ID!) {
      captureMessage(input: {projectId: $p, message: "hello"}) { eventId } }"""
    await gql(capture, {"p": str(app_project.project.id)})
    error = await gql.error(capture, {"p": str(app_project.project.id)})
    assert error["extensions"]["code"] == "RATE_LIMITED"


# --- body limits: 413 from Content-Length alone ---------------------------------------


def status_without_body(
    base_url: str, method: str, target: str, headers: dict[str, str], length: int
) -> int:
    """Send only the request head, announcing `length` bytes that never come; the answer
    can only be the server's verdict on Content-Length."""
    port = int(base_url.rsplit(":", 1)[1])
    head = [
        f"{method} {target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Length: {length}",
        "Content-Type: application/json",
        *(f"{name}: {value}" for name, value in headers.items()),
        "",
        "",
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall("\r\n".join(head).encode())
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return int(received.split(b" ", 2)[1])


def test_each_dialect_refuses_an_announced_oversized_body_unread(live_server: LiveServer, tmp_path):
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "Limits", "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    project = json.loads(created.stdout)
    key, api, pid = project["ingest_key"], project["api_key"], project["id"]
    default = live_server.settings.max_body_bytes
    cases = [
        ("POST", f"/api/{pid}/envelope/?sentry_key={key}", {}, sentry.MAX_BODY_BYTES),
        ("POST", f"/api/{pid}/store/?sentry_key={key}", {}, sentry.MAX_BODY_BYTES),
        ("POST", "/api/v1/errors", {}, default),
        ("POST", "/api/v1/errors/batch", {}, default),
        ("POST", "/observe/error-log/", {"ENV-KEY": key, "X-User-Context": "d-1"}, default),
        ("POST", f"/submit?_s={key}&_r=json", {}, default),
        ("POST", f"/log?_s={key}&_r=json", {}, default),
        ("POST", "/api/errors", {"X-API-Key": key}, error_tracker.MAX_BODY_BYTES),
        ("POST", "/v1/errors/capture", {"Authorization": f"Bearer {key}"}, default),
        ("POST", "/v1/errors/message", {"Authorization": f"Bearer {key}"}, default),
        ("PUT", "/v1/errors/retention/set", {"Authorization": f"Bearer {api}"}, default),
        ("POST", f"/api/v3/projects/{pid}/notices?key={key}", {}, default),
        (
            "POST",
            "/api/v1/releases/1.0/sourcemaps",
            {"Authorization": f"Bearer {api}"},
            sourcemaps.MAX_SOURCE_MAP_BYTES + sourcemaps.MAX_FORM_OVERHEAD,
        ),
        ("POST", "/graphql", {"Authorization": f"Bearer {api}"}, MAX_GRAPHQL_BODY_BYTES),
        ("POST", "/graphql", {}, default),  # larger bodies need credentials that may write
    ]
    assert error_tracker.MAX_BODY_BYTES == 256 * 1024 and 20 * MiB == sentry.MAX_BODY_BYTES
    for method, target, headers, limit in cases:
        status = status_without_body(live_server.base_url, method, target, headers, limit + 1)
        assert status == 413, (method, target, status)


@pytest.mark.parametrize("credentials", ["admin token", "read-only key", "none"])
async def test_graphql_stops_reading_a_body_past_its_limit(
    app_client: AppClient, app_project: CreatedProject, credentials: str
):
    """A GraphQL body sent without `Content-Length` is read only up to its limit, then
    refused (strawberry alone reads it all): the size of the largest source map upload
    for a caller who may write, `MAX_BODY_BYTES` for anyone else, whose credentials are
    looked at before the body is read."""
    settings = app_client.runtime.settings
    headers = {"Content-Type": "application/json"}
    if credentials == "admin token":
        headers["Authorization"] = f"Bearer {app_project.token.secret}"
        limit = MAX_GRAPHQL_BODY_BYTES
    elif credentials == "read-only key":
        key = await create_project_key(
            sessions=app_client.runtime.database.sessions,
            project_id=app_project.project.id,
            scopes=["read"],
        )
        headers["Authorization"] = f"Bearer {key.secret}"
        limit = settings.max_body_bytes
    else:
        limit = settings.max_body_bytes
    sent = 0

    async def pieces() -> AsyncIterator[bytes]:
        nonlocal sent
        piece = b" " * (MiB // 4)
        while sent <= MAX_GRAPHQL_BODY_BYTES + 8 * MiB:
            sent += len(piece)
            yield piece

    response = await app_client.http.post("/graphql", content=pieces(), headers=headers)
    assert response.status_code == 413
    [error] = response.json()["errors"]
    assert error["message"].startswith(f"request body is larger than {limit} bytes")
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}
    assert limit < sent <= limit + MiB // 2  # read no further than the limit
    if limit < MAX_GRAPHQL_BODY_BYTES:
        assert (
            f"up to {MAX_GRAPHQL_BODY_BYTES} bytes with credentials that may write"
            in (error["message"])
        )
    # An ordinary query after it is answered as ever.
    ok = await app_client.http.post("/graphql", json={"query": "{ __typename }"})
    assert ok.json() == {"data": {"__typename": "Query"}}


# --- the Sentry SDK backs off ---------------------------------------------------------


class CountingApp:
    """Counts the envelopes that reach the application, and keeps the rate-limit header
    of each answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.envelopes = 0
        self.rate_limits: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/envelope/"):
            await self.app(scope, receive, send)
            return
        self.envelopes += 1

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                self.rate_limits.append(headers.get(b"x-sentry-rate-limits", b"").decode())
            await send(message)

        await self.app(scope, receive, watched)


@contextmanager
def threaded_server(app: ASGIApp) -> Iterator[str]:
    """uvicorn on a thread of its own, so the test can count in the same process."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def new_project(settings: Settings) -> CreatedProject:
    async def create() -> CreatedProject:
        database = create_database(settings)
        try:
            await upgrade_database(database)
            return await create_project(sessions=database.sessions, name="SDK app")
        finally:
            await database.dispose()

    return asyncio.run(create())


def stored_count(settings: Settings) -> int:
    async def count() -> int:
        database = create_database(settings)
        try:
            async with database.sessions() as session:
                return int(await session.scalar(select(func.count()).select_from(Event)) or 0)
        finally:
            await database.dispose()

    return asyncio.run(count())


@pytest.mark.parametrize(
    ("limits", "header"),
    [
        ({"events_per_minute": 2}, r"\d+:default;error:key:key_quota"),
        ({"client_rate_limits": {"sentry": "2/minute"}}, r"\d+::ip:ip_rate_limit"),
    ],
    ids=["key-quota", "client-address"],
)
def test_the_sentry_sdk_stops_sending_for_the_window(settings: Settings, limits, header):
    limited = settings.model_copy(update=limits)
    project = new_project(limited)
    counting = CountingApp(create_app(limited))
    with threaded_server(counting) as host:
        dsn = f"http://{project.ingest_key.secret}@{host}/{project.project.id}"
        sentry_sdk.init(dsn=dsn, default_integrations=False, send_client_reports=False)
        try:
            for n in range(8):
                sentry_sdk.capture_message(f"checkout slow {n}")
                sentry_sdk.flush(timeout=15)
        finally:
            sentry_sdk.get_client().close(timeout=15)
            sentry_sdk.get_global_scope().set_client(None)
    # Two stored, the third refused with X-Sentry-Rate-Limits, and the SDK sent nothing
    # after it for the rest of the window.
    assert counting.envelopes == 3
    assert counting.rate_limits[:2] == ["", ""]
    assert re.fullmatch(header, counting.rate_limits[2]), counting.rate_limits
    assert stored_count(limited) == 2


# --- several processes: counters in Redis ---------------------------------------------


def test_limits_hold_across_two_processes(settings: Settings, tmp_path, redis_server):
    shared = settings.model_copy(update={"broadcast_url": redis_server.url})
    env = {
        "ERRORGRAPH_CLIENT_RATE_LIMITS": '{"error_tracker": "4/minute"}',
        "ERRORGRAPH_EVENTS_PER_MINUTE": "3",
    }
    with (
        running_server(shared, tmp_path, env, name="a") as a,
        running_server(shared, tmp_path, env, name="b") as b,
    ):
        for server in (a, b, a, b):
            assert httpx.get(server.base_url + "/api/errors").status_code == 401
        refused = httpx.get(b.base_url + "/api/errors")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1

        created = subprocess.run(
            [ERRORGRAPH, "project", "create", "Shared", "--json"],
            env=a.env,
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        )
        key = json.loads(created.stdout)["ingest_key"]

        def report(server: LiveServer, n: int) -> httpx.Response:
            return httpx.post(
                server.base_url + "/api/v1/errors",
                json={
                    "api_key": key,
                    "event_id": f"evt_{n}",
                    "timestamp": "2026-03-01T12:00:00Z",
                    "type": "exception",
                    "exception": {
                        "type": "E",
                        "message": f"m{n}",
                        "stack": "E: m\n at f (a.js:1:1)",
                    },
                },
                timeout=30,
            )

        for n, server in enumerate((a, b, a)):
            assert report(server, n).status_code == 202
        assert report(b, 3).status_code == 429


# --- the command line -----------------------------------------------------------------


def test_cli_project_update(settings: Settings, tmp_path):
    env = cli_env(settings)

    def errorgraph(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ERRORGRAPH, *args], env=env, capture_output=True, text=True, cwd=tmp_path
        )

    created = errorgraph("project", "create", "Shop", "--json")
    slug = json.loads(created.stdout)["slug"]
    done = errorgraph(
        "project",
        "update",
        slug,
        "--scrub-fields",
        "order_ref, iban",
        "--scrub-ip-addresses",
        "--events-per-minute",
        "600",
        "--events-per-hour",
        "0",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert {key: info[key] for key in info if key not in {"id", "slug", "name"}} == {
        "scrub_fields": ["order_ref", "iban"],
        "scrub_ip_addresses": True,
        "events_per_minute": 600,
        "events_per_hour": 0,
    }
    text_out = errorgraph("project", "update", slug, "--events-per-minute", "default")
    assert text_out.returncode == 0, text_out.stderr
    assert "Events per key a minute: server default (no limit)" in text_out.stdout
    assert "Events per key an hour: no limit" in text_out.stdout
    assert "Scrubbed fields (besides the built-in): order_ref, iban" in text_out.stdout
    assert "Client IP addresses: dropped" in text_out.stdout
    bad = errorgraph("project", "update", slug, "--events-per-minute", "lots")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "errorgraph: error: --events-per-minute takes a number (0: no limit) or 'default' "
        "(got 'lots')"
    )
