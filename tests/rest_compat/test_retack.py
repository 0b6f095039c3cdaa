"""`POST /observe/error-log/` exactly as the Retack document describes it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select
from support import ERRORGRAPH

from app.models import AffectedUser, Event, Group
from app.services.keys import CreatedProject, create_project_key, revoke_project_key

SEED = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "000_c9dc7f95aaf2e109.txt"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "retack"
PATH = "/observe/error-log/"
TRACE = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/shop/views.py", line 41, in checkout\n'
    "    total = price(order)\n"
    '  File "/srv/app/shop/pricing.py", line 9, in price\n'
    "    return order.amount / order.quantity\n"
    "ZeroDivisionError: division by zero\n"
)


def headers(key: str, context: str = "203.0.113.7", **extra: str) -> dict[str, str]:
    return {"ENV-KEY": key, "HTTP_X_USER_CONTEXT": context, **extra}


async def stored_events(app_client) -> list[Event]:
    async with app_client.runtime.database.sessions() as session:
        return list((await session.scalars(select(Event).order_by(Event.id))).all())


@pytest.mark.parametrize("name", sorted(path.name for path in FIXTURES.glob("*.json")))
async def test_json_body_becomes_an_event(app_client, app_project: CreatedProject, name: str):
    case = json.loads((FIXTURES / name).read_text())
    response = await app_client.http.post(
        PATH, json=case["request"], headers=headers(app_project.ingest_key.secret)
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and len(body["event_id"]) == 32

    [event] = await stored_events(app_client)
    async with app_client.runtime.database.sessions() as session:
        group = await session.get(Group, event.group_id)
        user = (await session.scalars(select(AffectedUser))).one()
    expect = case["expect"]
    assert event.event_id == body["event_id"]
    assert event.dialect == "retack" and event.type == "exception" and event.level == "error"
    assert event.message == case["request"]["title"]
    assert event.raw_stacktrace == case["request"]["stack_trace"]
    assert event.exception_type == expect["exception_type"]
    assert group is not None and group.title == expect["group_title"]
    frames = event.exceptions[-1]["frames"] if event.exceptions else []  # type: ignore[index]
    innermost = frames[-1]["function"] if frames else None
    assert innermost == expect["innermost_function"]
    assert (user.external_id, user.ip_address) == ("203.0.113.7", "203.0.113.7")
    assert event.user == {"id": "203.0.113.7", "ip_address": "203.0.113.7", "data": {}}


async def test_form_body_and_x_user_context(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        PATH,
        data={"title": "Checkout failed", "stack_trace": TRACE, "release": "4.2.0"},
        headers={"ENV-KEY": app_project.ingest_key.secret, "X-User-Context": "user-42"},
    )
    assert response.status_code == 200
    [event] = await stored_events(app_client)
    assert event.message == "Checkout failed"
    assert event.exception_type == "ZeroDivisionError"
    assert event.user == {"id": "user-42", "data": {}}
    assert event.extra == {"release": "4.2.0"}


async def test_multipart_form_body(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        PATH,
        files={"title": (None, "Checkout failed"), "stack_trace": (None, TRACE)},
        headers=headers(app_project.ingest_key.secret),
    )
    assert response.status_code == 200, response.text
    [event] = await stored_events(app_client)
    assert event.exception_type == "ZeroDivisionError"


async def test_query_string_only(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        PATH,
        params={"title": "From the query", "stack_trace": TRACE},
        headers=headers(app_project.ingest_key.secret),
    )
    assert response.status_code == 200
    [event] = await stored_events(app_client)
    assert event.message == "From the query"


@pytest.mark.parametrize("body_kind", ["json", "form"])
async def test_query_string_wins_over_the_body(
    app_client, app_project: CreatedProject, body_kind: str
):
    """ "If a parameter is sent in both the query string and request body, the query string
    parameter will be used" — and the two may be mixed."""
    body = {"title": "From the body", "stack_trace": TRACE}
    response = await app_client.http.post(
        PATH,
        params={"title": "From the query"},
        headers=headers(app_project.ingest_key.secret),
        **({"json": body} if body_kind == "json" else {"data": body}),
    )
    assert response.status_code == 200
    [event] = await stored_events(app_client)
    assert event.message == "From the query"
    assert event.exception_type == "ZeroDivisionError"


async def test_without_trailing_slash(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        "/observe/error-log",
        json={"title": "t", "stack_trace": TRACE},
        headers=headers(app_project.ingest_key.secret),
    )
    assert response.status_code == 200


async def test_missing_and_invalid_keys(app_client, app_project: CreatedProject):
    body = {"title": "t", "stack_trace": TRACE}
    missing = await app_client.http.post(PATH, json=body, headers={"HTTP_X_USER_CONTEXT": "u"})
    assert missing.status_code == 401
    assert missing.json() == {"detail": "Invalid ENV-KEY: ENV-KEY header is missing"}

    unknown = await app_client.http.post(PATH, json=body, headers=headers("pk_nope"))
    assert unknown.status_code == 401
    assert unknown.json() == {"detail": "Invalid ENV-KEY: invalid key"}

    sessions = app_client.runtime.database.sessions
    await revoke_project_key(sessions=sessions, key_id=app_project.ingest_key.key.id)
    revoked = await app_client.http.post(
        PATH, json=body, headers=headers(app_project.ingest_key.secret)
    )
    assert revoked.status_code == 401
    assert revoked.json() == {"detail": "Invalid ENV-KEY: key revoked"}

    read_only = await create_project_key(
        sessions=sessions, project_id=app_project.project.id, scopes=["read"]
    )
    forbidden = await app_client.http.post(PATH, json=body, headers=headers(read_only.secret))
    assert forbidden.status_code == 403
    assert forbidden.json() == {"detail": "this key has no 'ingest' scope"}
    assert await stored_events(app_client) == []


async def test_env_key_with_underscore_and_read_write_key(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        PATH,
        json={"title": "t", "stack_trace": TRACE},
        headers={"ENV_KEY": app_project.api_key.secret, "X-User-Context": "u"},
    )
    assert response.status_code == 200


async def test_user_context_is_required(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        PATH,
        json={"title": "t", "stack_trace": TRACE},
        headers={"ENV-KEY": app_project.ingest_key.secret},
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("HTTP_X_USER_CONTEXT header is required")
    assert await stored_events(app_client) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, {"title": ["This field is required."], "stack_trace": ["This field is required."]}),
        ({"title": "t"}, {"stack_trace": ["This field is required."]}),
        ({"stack_trace": TRACE}, {"title": ["This field is required."]}),
        ({"title": "  ", "stack_trace": TRACE}, {"title": ["This field may not be blank."]}),
        ({"title": 42, "stack_trace": TRACE}, {"title": ["Not a valid string."]}),
        ({"title": "t", "stack_trace": ["a", "b"]}, {"stack_trace": ["Not a valid string."]}),
        ({"title": None, "stack_trace": TRACE}, {"title": ["This field is required."]}),
    ],
)
async def test_field_errors_name_the_field(app_client, app_project, body, expected):
    response = await app_client.http.post(
        PATH, json=body, headers=headers(app_project.ingest_key.secret)
    )
    assert response.status_code == 400
    assert response.json() == expected
    assert await stored_events(app_client) == []


@pytest.mark.parametrize(
    ("content", "content_type", "query", "status", "expected"),
    [
        (b"{not json", "application/json", "", 400, "not valid JSON"),
        (b'["title", "stack_trace"]', "application/json", "", 400, "must be an object, not list"),
        (b'{"title": "\xff", "stack_trace": "x"}', "application/json", "", 400, "not valid JSON"),
        (b"title=%FF&stack_trace=x", "application/x-www-form-urlencoded", "", 400, "UTF-8"),
        (b"title=\xff&stack_trace=x", "application/x-www-form-urlencoded", "", 400, "UTF-8"),
        (b"", "", "title=%C3%28&stack_trace=x", 400, "query string is not valid UTF-8"),
        (b"<error/>", "application/xml", "", 415, 'Unsupported media type "application/xml"'),
        (
            b'--b\r\nContent-Disposition: form-data; name="title"; filename="t.txt"\r\n\r\n'
            b"x\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            "",
            400,
            "Too many files",
        ),
    ],
)
async def test_bad_bodies_are_4xx_with_the_reason(
    app_client, app_project, content, content_type, query, status, expected
):
    extra = {"content-type": content_type} if content_type else {}
    response = await app_client.http.post(
        PATH + ("?" + query if query else ""),
        content=content,
        headers=headers(app_project.ingest_key.secret, **extra),
    )
    assert response.status_code == status
    assert expected in response.json()["detail"]
    assert await stored_events(app_client) == []


async def test_body_over_the_limit_is_413(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        PATH,
        json={"title": "t", "stack_trace": "x" * 2_000_000},
        headers=headers(app_project.ingest_key.secret),
    )
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert await stored_events(app_client) == []


async def test_get_is_not_allowed(app_client):
    response = await app_client.http.get(PATH)
    assert response.status_code == 405


async def test_cors_preflight(app_client, app_project: CreatedProject):
    preflight = await app_client.http.options(
        PATH,
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, env-key, http_x_user_context",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed = preflight.headers["access-control-allow-headers"]
    assert allowed == "content-type, env-key, http_x_user_context"

    response = await app_client.http.post(
        PATH,
        json={"title": "t", "stack_trace": TRACE},
        headers=headers(app_project.ingest_key.secret, Origin="https://app.example.com"),
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert len(await stored_events(app_client)) == 1


def seed_curl_command() -> str:
    text = SEED.read_text()
    start = text.index("curl -X POST")
    return text[start:].split("\n\nRaw")[0].strip()


def test_seed_has_the_example():
    command = seed_curl_command()
    assert command.startswith("curl -X POST https://api.retack.ai/observe/error-log/ \\")
    assert "-H 'HTTP_X_USER_CONTEXT: <UNIQUE-USER-IDENTIFIER>'" in command


def test_document_curl_example_works_over_real_http(live_server, tmp_path):
    """The document's curl command, run by curl against a real uvicorn; only the base URL,
    the key and the user identifier are filled in."""
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "retack", "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    key = json.loads(created.stdout)["ingest_key"]
    command = (
        seed_curl_command()
        .replace("https://api.retack.ai", live_server.base_url)
        .replace("<YOUR-ENV-KEY>", key)
        .replace("<UNIQUE-USER-IDENTIFIER>", "device-7f3a")
    )
    output = subprocess.run(
        ["bash", "-c", command + " -s -w '\\n%{http_code}'"],
        capture_output=True,
        text=True,
        check=True,
    )
    body, status = output.stdout.rsplit("\n", 1)
    assert status == "200", output.stdout
    assert json.loads(body)["status"] == "ok"

    database = live_server.settings.sqlite_path
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT event.message, event.raw_stacktrace, affected_user.external_id "
            "FROM event JOIN affected_user ON affected_user.id = event.affected_user_id"
        ).fetchall()
    assert rows == [("<ERROR_TITLE>", "<ERROR-STACK_TRACE>", "device-7f3a")]
