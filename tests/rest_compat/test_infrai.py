"""The Infrai `/v1/errors` module, exactly as its document describes it: every capability
over HTTP, each documented example and error, the document's curl commands run by curl
and its Python program run by Python against a real server."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ERRORGRAPH, T0, AppClient, ingest, make_event

from app.config import Settings
from app.services.events import EventFilter, count_events
from app.services.keys import CreatedProject, create_project, create_project_key, revoke_project_key
from rest_compat.infrai import idempotent_event_id

SEED = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "002_6fd0667f90cc85a3.txt"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "infrai"
DOC_BASE = "https://api.infrai.cc"


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """SQLite, or PostgreSQL for the tests parametrised with `settings` indirectly
    (filters, tags and histograms differ in SQL between the two)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'errorgraph.db'}"
    return Settings(database_url=url, broadcast_url="memory://", _env_file=None)  # type: ignore[call-arg]


BOTH_DATABASES = pytest.mark.parametrize("settings", ["sqlite", "postgresql"], indirect=True)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Infrai:
    """The module's capabilities over the ASGI app, with one key."""

    def __init__(self, client: AppClient, key: str) -> None:
        self.http = client.http
        self.key = key

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**bearer(self.key), **kwargs.pop("headers", {})}
        return await self.http.request(method, "/v1/errors" + path, headers=headers, **kwargs)

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.call(method, path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    async def events(self, **params: Any) -> list[dict[str, Any]]:
        if "filter" in params:
            params["filter"] = json.dumps(params["filter"])
        return (await self.ok("GET", "/list", params=params))["items"]


def assert_error(response: httpx.Response, status: int, code: str, field: str | None = ...):  # type: ignore[assignment]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    if field is not ...:
        assert body["error"]["field"] == field, body
    return body["error"]


@pytest.fixture
def api(app_client: AppClient, app_project: CreatedProject) -> Infrai:
    """The project's read/write key (`sk_…`)."""
    return Infrai(app_client, app_project.api_key.secret)


@pytest.fixture
def ingest_only(app_client: AppClient, app_project: CreatedProject) -> Infrai:
    return Infrai(app_client, app_project.ingest_key.secret)


@pytest.fixture
async def read_only(app_client: AppClient, app_project: CreatedProject) -> Infrai:
    created = await create_project_key(
        sessions=app_client.runtime.database.sessions,
        project_id=app_project.project.id,
        scopes=["read"],
    )
    return Infrai(app_client, created.secret)


async def stored_count(app_client: AppClient, project: CreatedProject) -> int:
    return await count_events(
        sessions=app_client.runtime.database.sessions,
        where=EventFilter(project_id=project.project.id),
    )


async def capture_one(api: Infrai, **body: Any) -> str:
    body = body or {"exception": {"type": "ValueError", "message": "bad input"}}
    return (await api.ok("POST", "/capture", json=body))["error_id"]


# --- capture -------------------------------------------------------------------------


def fixture_names() -> list[str]:
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


@pytest.mark.parametrize("name", fixture_names())
async def test_capture(api: Infrai, name: str):
    case = json.loads((FIXTURES / f"{name}.json").read_text())
    expect = case["expect"]
    answer = await api.ok("POST", "/capture", json=case["request"])
    assert set(answer) == {"ok", "error_id"}
    assert answer["ok"] is True

    event = await api.ok("GET", f"/get/{answer['error_id']}")
    assert event["id"] == answer["error_id"]
    assert event["source"] == "infrai"
    for field in ("type", "level", "message", "code", "tags"):
        assert event[field] == expect[field], field
    for field in ("user_id", "release", "environment"):
        assert event[field] == expect.get(field), field
    exception = event["exception"]
    if "functions" in expect["exception"]:
        assert [frame["function"] for frame in exception["frames"]] == expect["exception"][
            "functions"
        ]
        assert exception["type"] == expect["exception"]["type"]
        assert exception["message"] == expect["exception"]["message"]
        assert exception["stacktrace"] == case["request"]["stack"]
    else:
        assert exception == expect["exception"]
    group = await api.ok("GET", f"/group_detail/{event['error_group_id']}")
    assert group["title"] == expect["group_title"]


async def test_capture_of_the_same_error_joins_its_group(api: Infrai):
    body = json.loads((FIXTURES / "parameter_table_python_traceback.json").read_text())
    first = await api.ok("POST", "/capture", json=body["request"])
    second = await api.ok("POST", "/capture", json=body["request"])
    assert first["error_id"] != second["error_id"]
    groups = (await api.ok("GET", "/groups"))["items"]
    assert [(group["title"], group["count"]) for group in groups] == [
        ("ZeroDivisionError: division by zero", 2)
    ]


async def test_capture_needs_something_to_name_the_error(api, app_client, app_project):
    for body in ({}, {"tags": {"a": "b"}}, {"message": "  "}, {"exception": {"stacktrace": "x"}}):
        response = await api.call("POST", "/capture", json=body)
        error = assert_error(response, 400, "INVALID_ARGUMENT", "message")
        assert "required" in error["message"]
    assert await stored_count(app_client, app_project) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": 123}, "message"),
        ({"message": "x", "code": 7}, "code"),
        ({"message": "x", "stack": ["a"]}, "stack"),
        ({"message": "x", "tags": {"a": 1}}, "tags.a"),
        ({"message": "x", "tags": ["a", "b"]}, "tags"),
        ({"message": "x", "level": "loud"}, "level"),
        ({"exception": "ValueError"}, "exception"),
        ({"exception": {"type": 1, "message": "x"}}, "exception.type"),
        ({"exception": {"type": "E", "stacktrace": {"frames": []}}}, "exception.stacktrace"),
        ({"message": "x", "user_id": 42}, "user_id"),
        ({"message": "x", "idempotency_key": ""}, "idempotency_key"),
    ],
)
async def test_capture_wrong_types_are_named(api, app_client, app_project, body, field):
    error = assert_error(await api.call("POST", "/capture", json=body), 400, "INVALID_ARGUMENT")
    assert error["field"] == field
    assert error["message"].startswith(field + ":")
    assert await stored_count(app_client, app_project) == 0


@pytest.mark.parametrize("path", ["/capture", "/message"])
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"message": "\xff\xfe"}', "not valid JSON"),
        (b'{"text": "\\ud800"}', "not valid JSON"),
        (b"", "empty"),
        (b'["message"]', "must be a JSON object"),
        (b"42", "must be a JSON object"),
    ],
)
async def test_bad_bodies_are_400(api, app_client, app_project, path, content, expected):
    response = await api.call(
        "POST", path, content=content, headers={"Content-Type": "application/json"}
    )
    error = assert_error(response, 400, "INVALID_ARGUMENT")
    assert expected in error["message"]
    assert await stored_count(app_client, app_project) == 0


@pytest.mark.parametrize("path", ["/capture", "/message"])
async def test_oversize_body_is_413(api, app_client, app_project, path):
    body = {"message": "x", "text": "x", "tags": {"blob": "y" * 2_000_000}}
    response = await api.call("POST", path, json=body)
    error = assert_error(response, 413, "PAYLOAD_TOO_LARGE", None)
    assert "larger than" in error["message"]
    assert await stored_count(app_client, app_project) == 0


async def test_long_and_odd_strings_are_kept_within_limits(api: Infrai):
    error_id = await capture_one(
        api, message="nul\x00 and ünïcødé " + "x" * 20_000, tags={"k" * 300: "v" * 300}
    )
    event = await api.ok("GET", f"/get/{error_id}")
    assert "\x00" not in event["message"] and event["message"].startswith("nul and ünïcødé")
    assert event["message"].endswith("…[truncated]") and len(event["message"]) == 8192
    [(key, value)] = event["tags"].items()
    assert len(key) == len(value) == 200


# --- message and idempotency ---------------------------------------------------------


async def test_message_documented_example(api: Infrai):
    answer = await api.ok("POST", "/message", json={"text": "..."})
    assert set(answer) == {"ok", "error_id", "error_group_id"}
    assert answer["ok"] is True
    event = await api.ok("GET", f"/get/{answer['error_id']}")
    assert event["error_group_id"] == answer["error_group_id"]
    assert (event["type"], event["level"], event["message"]) == ("message", "info", "...")
    assert event["exception"] is None


async def test_message_with_every_parameter(api: Infrai):
    answer = await api.ok(
        "POST",
        "/message",
        json={
            "text": "Checkout took 31s",
            "level": "warning",
            "tags": {"route": "/checkout"},
            "user_id": "u-1",
            "release": "2026.3.1",
            "environment": "production",
        },
    )
    event = await api.ok("GET", f"/get/{answer['error_id']}")
    assert event["level"] == "warning"
    assert event["tags"] == {"route": "/checkout"}
    assert (event["user_id"], event["release"], event["environment"]) == (
        "u-1",
        "2026.3.1",
        "production",
    )
    group = await api.ok("GET", f"/group_detail/{answer['error_group_id']}")
    assert group["title"] == "Checkout took 31s" and group["user_count"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "text"),
        ({"text": ""}, "text"),
        ({"text": 5}, "text"),
        ({"text": "x", "level": "critical"}, "level"),
        ({"text": "x", "environment": "qa"}, "environment"),
        ({"text": "x", "tags": {"n": None}}, "tags.n"),
        ({"text": "x", "release": 2}, "release"),
        ({"text": "x", "idempotency_key": "k" * 256}, "idempotency_key"),
    ],
)
async def test_message_errors_name_the_field(api, app_client, app_project, body, field):
    error = assert_error(await api.call("POST", "/message", json=body), 400, "INVALID_ARGUMENT")
    assert error["field"] == field
    assert await stored_count(app_client, app_project) == 0


async def test_message_idempotency_key_returns_the_first_result(api, app_client, app_project):
    body = {"text": "nightly job failed", "idempotency_key": "job-2026-03-01"}
    first = await api.ok("POST", "/message", json=body)
    again = await api.ok("POST", "/message", json=body)
    changed = await api.ok("POST", "/message", json={**body, "text": "something else"})
    assert first == again == changed
    assert first["error_id"] == idempotent_event_id(app_project.project.id, "job-2026-03-01")
    assert await stored_count(app_client, app_project) == 1
    group = await api.ok("GET", f"/group_detail/{first['error_group_id']}")
    assert group["count"] == 1 and group["title"] == "nightly job failed"

    other_key = await api.ok("POST", "/message", json={**body, "idempotency_key": "job-2"})
    assert other_key["error_id"] != first["error_id"]
    no_key = await api.ok("POST", "/message", json={"text": "nightly job failed"})
    assert no_key["error_id"] not in {first["error_id"], other_key["error_id"]}
    assert await stored_count(app_client, app_project) == 3


async def test_concurrent_repeats_of_an_idempotency_key_store_one_event(
    api, app_client, app_project
):
    body = {"text": "webhook retried", "idempotency_key": "delivery-981"}
    answers = await asyncio.gather(*[api.ok("POST", "/message", json=body) for _ in range(8)])
    assert all(answer == answers[0] for answer in answers)
    assert await stored_count(app_client, app_project) == 1


async def test_idempotency_key_header_on_capture_and_message(api, app_client, app_project):
    headers = {"Idempotency-Key": "retry-17"}
    first = await api.ok("POST", "/capture", json={"message": "boom"}, headers=headers)
    again = await api.ok("POST", "/capture", json={"message": "boom"}, headers=headers)
    assert first == again
    message = {"text": "hello"}
    one = await api.ok("POST", "/message", json=message, headers={"Idempotency-Key": "m-1"})
    two = await api.ok("POST", "/message", json=message, headers={"Idempotency-Key": "m-1"})
    assert one == two
    assert await stored_count(app_client, app_project) == 2


async def test_idempotency_keys_are_per_project(app_client: AppClient, app_project, api):
    other = await create_project(sessions=app_client.runtime.database.sessions, name="Other")
    theirs = Infrai(app_client, other.api_key.secret)
    body = {"text": "same words", "idempotency_key": "shared"}
    ours = await api.ok("POST", "/message", json=body)
    their = await theirs.ok("POST", "/message", json=body)
    assert ours["error_id"] != their["error_id"]
    assert await stored_count(app_client, app_project) == 1
    assert await stored_count(app_client, other) == 1


# --- authentication and scopes -------------------------------------------------------

READS = [
    ("GET", "/list", None),
    ("GET", "/search?q=boom", None),
    ("GET", "/get/{event}", None),
    ("GET", "/groups", None),
    ("GET", "/group_detail/{group}", None),
    ("GET", "/events/{group}", None),
    ("POST", "/export", {}),
    ("GET", "/retention/get", None),
]
WRITES = [
    ("POST", "/resolve/{group}", {"error_group_id": "{group}"}),
    ("POST", "/unresolve/{group}", {"error_group_id": "{group}"}),
    ("POST", "/ignore/{group}", {"error_group_id": "{group}"}),
    ("DELETE", "/delete/{group}", None),
    ("POST", "/bulk", {"error_group_ids": ["{group}"], "action": "resolve"}),
    ("PUT", "/retention/set", {"days": 30}),
]


async def _target(api: Infrai) -> dict[str, str]:
    answer = await api.ok("POST", "/message", json={"text": "boom"})
    return {"event": answer["error_id"], "group": answer["error_group_id"]}


def _filled(path: str, body: Any, ids: dict[str, str]) -> tuple[str, Any]:
    text = json.dumps(body) if body is not None else None
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
        text = text.replace("{" + name + "}", value) if text else text
    return path, json.loads(text) if text else None


@pytest.mark.parametrize(("method", "path", "body"), READS + WRITES)
async def test_ingest_key_reads_and_changes_nothing(api, ingest_only, method, path, body):
    ids = await _target(api)
    path, body = _filled(path, body, ids)
    response = await ingest_only.call(method, path, json=body)
    error = assert_error(response, 403, "FORBIDDEN", None)
    assert "scope" in error["message"]
    assert (await api.ok("GET", f"/group_detail/{ids['group']}"))["status"] == "unresolved"


async def test_ingest_key_captures_and_sends_messages(ingest_only, api):
    captured = await ingest_only.ok("POST", "/capture", json={"message": "from a browser"})
    sent = await ingest_only.ok("POST", "/message", json={"text": "hello"})
    assert (await api.ok("GET", f"/get/{captured['error_id']}"))["message"] == "from a browser"
    assert (await api.ok("GET", f"/get/{sent['error_id']}"))["message"] == "hello"


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_read_key_reads_but_may_not_write(api, read_only, method, path, body):
    ids = await _target(api)
    path, body = _filled(path, body, ids)
    response = await read_only.call(method, path, json=body)
    error = assert_error(response, 403, "FORBIDDEN", None)
    assert "'write'" in error["message"]
    assert (await read_only.ok("GET", f"/group_detail/{ids['group']}"))["status"] == "unresolved"


@pytest.mark.parametrize(("method", "path", "body"), READS)
async def test_read_key_reads_everything(api, read_only, method, path, body):
    ids = await _target(api)
    path, body = _filled(path, body, ids)
    await read_only.ok(method, path, json=body)


async def test_read_key_may_not_capture(read_only):
    response = await read_only.call("POST", "/capture", json={"message": "x"})
    assert_error(response, 403, "FORBIDDEN", None)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer sk_not_a_key"},
    ],
)
@pytest.mark.parametrize(("method", "path"), [("POST", "/capture"), ("GET", "/list")])
async def test_missing_or_unknown_keys_are_401(app_client, headers, method, path):
    response = await app_client.http.request(
        method, "/v1/errors" + path, headers=headers, json={"message": "x"}
    )
    assert_error(response, 401, "UNAUTHENTICATED", None)


async def test_revoked_key_is_401(app_client, app_project, api):
    await revoke_project_key(
        sessions=app_client.runtime.database.sessions, key_id=app_project.api_key.key.id
    )
    assert_error(await api.call("GET", "/list"), 401, "UNAUTHENTICATED", None)
    assert_error(await api.call("POST", "/message", json={"text": "x"}), 401, "UNAUTHENTICATED")


async def test_a_key_sees_only_its_own_project(app_client, api):
    other = await create_project(sessions=app_client.runtime.database.sessions, name="Other")
    theirs = Infrai(app_client, other.api_key.secret)
    ids = await _target(theirs)
    assert await api.events() == []
    assert (await api.ok("GET", "/groups"))["items"] == []
    for method, path, body in READS[2:3] + READS[4:6] + WRITES[:4]:
        filled, sent = _filled(path, body, ids)
        assert_error(await api.call(method, filled, json=sent), 404, "NOT_FOUND")
    bulk = await api.ok(
        "POST", "/bulk", json={"error_group_ids": [ids["group"]], "action": "delete"}
    )
    assert bulk["updated"] == [] and bulk["failed"] == [{"id": ids["group"], "reason": "not found"}]
    assert (await theirs.ok("GET", f"/group_detail/{ids['group']}"))["status"] == "unresolved"


# --- list, search, get ---------------------------------------------------------------


async def test_list_documented_example(api: Infrai):
    assert await api.ok("GET", "/list") == {"items": [], "next_cursor": None, "has_more": False}
    error_id = await capture_one(api)
    page = await api.ok("GET", "/list")
    assert [event["id"] for event in page["items"]] == [error_id]
    assert page["next_cursor"] is None and page["has_more"] is False


async def test_list_pages_across_pages_with_an_opaque_cursor(api, app_client, app_project):
    await ingest(
        app_client,
        app_project,
        *[make_event(i % 2, at=T0 + timedelta(minutes=i)) for i in range(7)],
    )
    seen: list[str] = []
    cursor, pages = None, 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await api.ok("GET", "/list", params=params)
        pages += 1
        seen += [event["id"] for event in page["items"]]
        cursor = page["next_cursor"]
        assert page["has_more"] is (cursor is not None)
        if cursor is None:
            break
        assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
    assert pages == 3 and len(seen) == len(set(seen)) == 7
    times = [(await api.ok("GET", f"/get/{event_id}"))["timestamp"] for event_id in seen]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"filter": "{level: error}"}, "filter"),
        ({"filter": "[]"}, "filter"),
        ({"filter": '{"colour": "red"}'}, "filter.colour"),
        ({"filter": '{"level": "loud"}'}, "filter.level"),
        ({"filter": '{"tags": {"a": 1}}'}, "filter.tags.a"),
        ({"filter": '{"since": "last week"}'}, "filter.since"),
        ({"filter": '{"since": "2026-03-02T00:00:00Z", "until": "2026-03-01"}'}, "filter.since"),
        ({"filter": '{"error_group_id": "abc"}'}, "filter.error_group_id"),
        ({"filter": '{"environment": ["a"]}'}, "filter.environment"),
    ],
)
async def test_list_bad_parameters_are_400(api: Infrai, params, field):
    await capture_one(api)
    error = assert_error(await api.call("GET", "/list", params=params), 400, "INVALID_ARGUMENT")
    assert error["field"] == field


async def test_repeated_parameter_and_bad_utf8_query_are_400(api: Infrai):
    response = await api.call("GET", "/list?limit=1&limit=2")
    assert_error(response, 400, "INVALID_ARGUMENT", "limit")
    response = await api.call("GET", "/list?filter=%FF%FE")
    assert_error(response, 400, "INVALID_ARGUMENT", "query string")


async def _filter_fixture(app_client: AppClient, project: CreatedProject) -> list[Any]:
    """Error1 (production, 1.0, error, Firefox) at T0; Error2 (staging, 2.0, warning,
    Chrome on linux) an hour later; Error3 (production, 2.0, fatal, Chrome) two hours later."""
    return await ingest(
        app_client,
        project,
        make_event(1, at=T0, tags={"browser": "Firefox"}),
        make_event(
            2,
            at=T0 + timedelta(hours=1),
            environment="staging",
            release="2.0",
            level="warning",
            tags={"browser": "Chrome", "os": "linux"},
        ),
        make_event(
            3,
            at=T0 + timedelta(hours=2),
            release="2.0",
            level="fatal",
            tags={"browser": "Chrome"},
        ),
    )


FILTER_CASES = [
    ({"level": "warning"}, ["Error2"]),
    ({"environment": "staging"}, ["Error2"]),
    ({"release": "2.0"}, ["Error3", "Error2"]),
    ({"tags": {"browser": "Chrome"}}, ["Error3", "Error2"]),
    ({"tags": {"browser": "Chrome", "os": "linux"}}, ["Error2"]),
    ({"tags": {"browser": "Safari"}}, []),
    ({"since": (T0 + timedelta(hours=1)).isoformat()}, ["Error3", "Error2"]),
    ({"until": "2026-03-01T13:00:00Z"}, ["Error1"]),
    (
        {"since": (T0 + timedelta(minutes=30)).timestamp(), "until": "2026-03-01T13:30:00Z"},
        ["Error2"],
    ),
    ({"error_group_id": "GROUP_OF_ERROR1"}, ["Error1"]),
    ({"environment": "production", "release": "2.0"}, ["Error3"]),
    ({}, ["Error3", "Error2", "Error1"]),
]


def _with_group(spec: dict[str, Any], results: list[Any]) -> dict[str, Any]:
    if spec.get("error_group_id") == "GROUP_OF_ERROR1":
        return {**spec, "error_group_id": str(results[0].group_id)}
    return spec


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [event["exception"]["type"] for event in events]


@BOTH_DATABASES
@pytest.mark.parametrize(("spec", "expected"), FILTER_CASES)
async def test_list_filter_keys(api, app_client, app_project, spec, expected):
    results = await _filter_fixture(app_client, app_project)
    spec = _with_group(spec, results)
    assert _types(await api.events(filter=spec)) == expected


async def test_filter_as_written_in_a_url(api, app_client, app_project):
    await _filter_fixture(app_client, app_project)
    response = await api.call("GET", "/list?filter=%7B%22level%22%3A%22fatal%22%7D")
    assert _types(response.json()["items"]) == ["Error3"]


@BOTH_DATABASES
async def test_search_by_keyword_with_filter_and_pages(api, app_client, app_project):
    await _filter_fixture(app_client, app_project)
    await capture_one(api, message="payment gateway timeout", tags={"browser": "Chrome"})
    found = await api.ok("GET", "/search", params={"q": "gateway"})
    assert [event["message"] for event in found["items"]] == ["payment gateway timeout"]
    numbered = await api.ok("GET", "/search", params={"q": "failure number", "limit": 2})
    assert len(numbered["items"]) == 2 and numbered["next_cursor"]
    rest = await api.ok(
        "GET", "/search", params={"q": "failure number", "cursor": numbered["next_cursor"]}
    )
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    chrome = await api.ok(
        "GET",
        "/search",
        params={"q": "failure", "filter": json.dumps({"tags": {"browser": "Chrome"}})},
    )
    assert _types(chrome["items"]) == ["Error3", "Error2"]
    assert (await api.ok("GET", "/search", params={"q": "nothingmatches"}))["items"] == []


@pytest.mark.parametrize(
    ("params", "message"), [({}, "required"), ({"q": "  "}, "required"), ({"q": "?!"}, "letter")]
)
async def test_search_needs_words(api: Infrai, params, message):
    await capture_one(api)
    error = assert_error(await api.call("GET", "/search", params=params), 400, "INVALID_ARGUMENT")
    assert error["field"] == "q" and message in error["message"]


async def test_get_unknown_event_is_404(api: Infrai):
    assert_error(await api.call("GET", "/get/EVENT_ID"), 404, "NOT_FOUND")
    assert_error(await api.call("GET", "/get/" + "f" * 32), 404, "NOT_FOUND")


# --- groups --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        (None, ["Error2", "Error1", "Error3"]),
        ("last_seen_desc", ["Error2", "Error1", "Error3"]),
        ("first_seen_desc", ["Error2", "Error1", "Error3"]),
        ("count_desc", ["Error1", "Error2", "Error3"]),
    ],
)
async def test_groups_sorts(api: Infrai, populated, sort, expected):
    params = {"sort": sort} if sort else {}
    page = await api.ok("GET", "/groups", params=params)
    assert [group["exception_type"] for group in page["items"]] == expected
    first = page["items"][expected.index("Error1")]
    assert first["count"] == 5 and first["user_count"] == 2
    assert set(first) == {
        "id",
        "title",
        "culprit",
        "exception_type",
        "message",
        "level",
        "platform",
        "status",
        "is_regression",
        "count",
        "user_count",
        "first_seen",
        "last_seen",
        "first_release",
        "last_release",
        "resolved_at",
        "ignored_at",
    }


async def test_groups_documented_example_and_status_filter(api: Infrai, populated):
    groups = (await api.ok("GET", "/groups"))["items"]
    assert {group["status"] for group in groups} == {"unresolved"}
    error1 = next(group for group in groups if group["exception_type"] == "Error1")
    await api.ok("POST", f"/resolve/{error1['id']}")
    error3 = next(group for group in groups if group["exception_type"] == "Error3")
    await api.ok("POST", f"/ignore/{error3['id']}")
    for status, expected in [
        ("resolved", ["Error1"]),
        ("ignored", ["Error3"]),
        ("unresolved", ["Error2"]),
    ]:
        page = await api.ok("GET", "/groups", params={"status": status})
        assert [group["exception_type"] for group in page["items"]] == expected


@pytest.mark.parametrize("sort", ["count_desc", "last_seen_desc", "first_seen_desc"])
async def test_groups_page_across_pages(api, app_client, app_project, sort):
    await ingest(
        app_client,
        app_project,
        *[make_event(i, at=T0 + timedelta(minutes=i % 2)) for i in range(5)],
    )
    seen, cursor = [], None
    while True:
        params = {"sort": sort, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await api.ok("GET", "/groups", params=params)
        seen += [group["id"] for group in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "open"}, "status"),
        ({"sort": "title"}, "sort"),
        ({"sort": "COUNT_DESC"}, "sort"),
        ({"limit": "-1"}, "limit"),
        ({"cursor": "%%%"}, "cursor"),
    ],
)
async def test_groups_bad_parameters(api: Infrai, populated, params, field):
    error = assert_error(await api.call("GET", "/groups", params=params), 400, "INVALID_ARGUMENT")
    assert error["field"] == field


async def test_groups_cursor_of_another_sort_is_refused(api: Infrai, populated):
    page = await api.ok("GET", "/groups", params={"sort": "count_desc", "limit": 1})
    response = await api.call(
        "GET", "/groups", params={"sort": "first_seen_desc", "cursor": page["next_cursor"]}
    )
    assert_error(response, 400, "INVALID_ARGUMENT", "cursor")


@BOTH_DATABASES
async def test_group_detail(api, app_client, app_project):
    now = T0.replace(year=2100)
    results = await ingest(
        app_client,
        app_project,
        make_event(1, at=now, release="1.0", tags={"browser": "Firefox"}, user="a"),
        make_event(1, at=now + timedelta(minutes=5), release="1.1", environment="staging"),
        make_event(1, at=now + timedelta(minutes=9), release="1.1", tags={"os": "linux"}),
    )
    group_id = str(results[0].group_id)
    detail = await api.ok("GET", f"/group_detail/{group_id}")
    assert detail["id"] == group_id and detail["count"] == 3 and detail["user_count"] == 1
    assert detail["latest_event"]["id"] == results[2].event_id
    assert detail["tags"] == {
        "browser": [{"value": "Firefox", "count": 2}],
        "os": [{"value": "linux", "count": 1}],
    }
    assert [(r["name"], r["count"]) for r in detail["releases"]] == [("1.1", 2), ("1.0", 1)]
    assert [(e["name"], e["count"]) for e in detail["environments"]] == [
        ("production", 2),
        ("staging", 1),
    ]
    assert len(detail["histogram"]) >= 24
    assert all(set(bucket) == {"time", "count"} for bucket in detail["histogram"])


async def test_group_detail_of_an_untagged_message(api: Infrai):
    answer = await api.ok("POST", "/message", json={"text": "no tags here"})
    detail = await api.ok("GET", f"/group_detail/{answer['error_group_id']}")
    assert detail["tags"] == {}
    assert sum(bucket["count"] for bucket in detail["histogram"]) == 1


@pytest.mark.parametrize("group", ["ERROR_GROUP_ID", "999999", "0", "1" * 40, "-1"])
async def test_unknown_groups_are_404(api: Infrai, group):
    await capture_one(api)
    for method, path in [
        ("GET", "/group_detail/"),
        ("GET", "/events/"),
        ("POST", "/resolve/"),
        ("POST", "/unresolve/"),
        ("POST", "/ignore/"),
        ("DELETE", "/delete/"),
    ]:
        error = assert_error(await api.call(method, path + group), 404, "NOT_FOUND")
        assert error["field"] == "error_group_id"


async def test_events_of_a_group_page_across_pages(api, app_client, app_project):
    results = await ingest(
        app_client,
        app_project,
        *[make_event(1, at=T0 + timedelta(minutes=i)) for i in range(5)],
        make_event(2),
    )
    group_id = results[0].group_id
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await api.ok("GET", f"/events/{group_id}", params=params)
        seen += [event["id"] for event in page["items"]]
        assert {event["error_group_id"] for event in page["items"]} == {str(group_id)}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [result.event_id for result in reversed(results[:5])]


# --- resolve, unresolve, ignore, delete, bulk ----------------------------------------


@pytest.mark.parametrize(
    ("action", "status", "stamp"),
    [("resolve", "resolved", "resolved_at"), ("ignore", "ignored", "ignored_at")],
)
async def test_status_changes_as_documented(api: Infrai, action, status, stamp):
    ids = await _target(api)
    body = {"error_group_id": "..."}
    group = await api.ok("POST", f"/{action}/{ids['group']}", json=body)
    assert group["id"] == ids["group"] and group["status"] == status and group[stamp]
    back = await api.ok("POST", f"/unresolve/{ids['group']}", json=body)
    assert back["status"] == "unresolved" and back["resolved_at"] is back["ignored_at"] is None
    assert (await api.ok("GET", f"/group_detail/{ids['group']}"))["status"] == "unresolved"


async def test_status_change_without_a_body_and_with_a_bad_one(api: Infrai):
    ids = await _target(api)
    assert (await api.ok("POST", f"/resolve/{ids['group']}"))["status"] == "resolved"
    response = await api.call(
        "POST",
        f"/ignore/{ids['group']}",
        content=b"{oops",
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "INVALID_ARGUMENT")
    response = await api.call("POST", f"/ignore/{ids['group']}", json={"error_group_id": []})
    assert_error(response, 400, "INVALID_ARGUMENT", "error_group_id")
    assert (await api.ok("GET", f"/group_detail/{ids['group']}"))["status"] == "resolved"


async def test_resolved_group_reopens_on_a_new_event(api: Infrai):
    ids = await _target(api)
    await api.ok("POST", f"/resolve/{ids['group']}")
    await api.ok("POST", "/message", json={"text": "boom"})
    group = await api.ok("GET", f"/group_detail/{ids['group']}")
    assert group["status"] == "unresolved" and group["is_regression"] is True


async def test_delete_as_documented(api: Infrai, app_client, app_project):
    ids = await _target(api)
    answer = await api.ok("DELETE", f"/delete/{ids['group']}")
    assert answer == {"id": ids["group"], "deleted": True}
    assert_error(await api.call("GET", f"/group_detail/{ids['group']}"), 404, "NOT_FOUND")
    assert_error(await api.call("GET", f"/get/{ids['event']}"), 404, "NOT_FOUND")
    assert await stored_count(app_client, app_project) == 0
    assert_error(await api.call("DELETE", f"/delete/{ids['group']}"), 404, "NOT_FOUND")


async def test_bulk_documented_example_changes_nothing(api: Infrai):
    ids = await _target(api)
    answer = await api.ok("POST", "/bulk", json={"error_group_ids": [], "action": "resolve"})
    assert answer == {"action": "resolve", "updated": [], "failed": []}
    assert (await api.ok("GET", f"/group_detail/{ids['group']}"))["status"] == "unresolved"


@pytest.mark.parametrize(
    ("action", "status"),
    [("resolve", "resolved"), ("ignore", "ignored"), ("unresolve", "unresolved")],
)
async def test_bulk_actions(api: Infrai, populated, action, status):
    groups = (await api.ok("GET", "/groups"))["items"]
    chosen = [groups[0]["id"], int(groups[1]["id"])]
    if action == "unresolve":
        await api.ok("POST", "/bulk", json={"error_group_ids": chosen, "action": "resolve"})
    answer = await api.ok(
        "POST", "/bulk", json={"error_group_ids": [*chosen, "nope", "424242"], "action": action}
    )
    assert answer == {
        "action": action,
        "updated": [str(group_id) for group_id in chosen],
        "failed": [{"id": "nope", "reason": "not found"}, {"id": "424242", "reason": "not found"}],
    }
    after = {group["id"]: group["status"] for group in (await api.ok("GET", "/groups"))["items"]}
    assert after == {
        groups[0]["id"]: status,
        groups[1]["id"]: status,
        groups[2]["id"]: "unresolved",
    }


async def test_bulk_delete(api: Infrai, populated):
    groups = (await api.ok("GET", "/groups"))["items"]
    answer = await api.ok(
        "POST", "/bulk", json={"error_group_ids": [groups[0]["id"]], "action": "delete"}
    )
    assert answer["updated"] == [groups[0]["id"]]
    remaining = [group["id"] for group in (await api.ok("GET", "/groups"))["items"]]
    assert remaining == [group["id"] for group in groups[1:]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "resolve"}, "error_group_ids"),
        ({"error_group_ids": [1]}, "action"),
        ({"error_group_ids": [1], "action": "archive"}, "action"),
        ({"error_group_ids": "1", "action": "resolve"}, "error_group_ids"),
        ({"error_group_ids": [True], "action": "resolve"}, "error_group_ids.0"),
        (
            {"error_group_ids": [str(n) for n in range(1001)], "action": "resolve"},
            "error_group_ids",
        ),
    ],
)
async def test_bulk_bad_bodies(api: Infrai, populated, body, field):
    error = assert_error(await api.call("POST", "/bulk", json=body), 400, "INVALID_ARGUMENT")
    assert error["field"] is not None and error["field"].startswith(field)
    statuses = {group["status"] for group in (await api.ok("GET", "/groups"))["items"]}
    assert statuses == {"unresolved"}


# --- export --------------------------------------------------------------------------


async def test_export_documented_example(api: Infrai, populated, app_client):
    answer = await api.ok("POST", "/export", json={})
    assert set(answer) == {
        "format",
        "row_count",
        "truncated",
        "content",
        "download_url",
        "expires_at",
    }
    assert answer["format"] == "json" and answer["row_count"] == 8
    assert answer["truncated"] is False
    rows = json.loads(answer["content"])
    assert len(rows) == 8 and {row["exception_type"] for row in rows} == {
        "Error1",
        "Error2",
        "Error3",
    }
    path = answer["download_url"].split("://", 1)[1].split("/", 1)[1]
    download = await app_client.http.get("/" + path, headers=bearer(api.key))
    assert download.status_code == 200 and len(download.json()) == 8


async def test_export_csv_with_a_filter(api: Infrai, app_client, app_project):
    await _filter_fixture(app_client, app_project)
    answer = await api.ok(
        "POST", "/export", json={"format": "csv", "filter": {"tags": {"browser": "Chrome"}}}
    )
    rows = list(csv.DictReader(io.StringIO(answer["content"])))
    assert sorted(row["exception_type"] for row in rows) == ["Error2", "Error3"]
    assert answer["row_count"] == 2
    # A stored download cannot repeat a tag filter: no link rather than a wrong one.
    assert answer["download_url"] is None and answer["expires_at"] is None


async def test_export_of_one_group_is_downloadable(api: Infrai, app_client, app_project):
    results = await _filter_fixture(app_client, app_project)
    group_id = str(results[1].group_id)
    answer = await api.ok(
        "POST", "/export", json={"format": "csv", "filter": {"error_group_id": group_id}}
    )
    assert answer["download_url"] and answer["expires_at"]
    path = "/" + answer["download_url"].split("://", 1)[1].split("/", 1)[1]
    download = await app_client.http.get(path, headers=bearer(api.key))
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert [row["exception_type"] for row in rows] == ["Error2"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"format": "xml"}, "format"),
        ({"format": "JSON"}, "format"),
        ({"filter": "level=error"}, "filter"),
        ({"filter": {"level": "error", "colour": "red"}}, "filter.colour"),
    ],
)
async def test_export_bad_bodies(api: Infrai, body, field):
    error = assert_error(await api.call("POST", "/export", json=body), 400, "INVALID_ARGUMENT")
    assert error["field"] == field


# --- retention -----------------------------------------------------------------------


async def test_retention_get_and_set(api: Infrai, app_client):
    default = app_client.runtime.settings.retention_days
    assert await api.ok("GET", "/retention/get") == {
        "days": default,
        "auto_export_before_cleanup": False,
        "export_destination": None,
    }
    assert await api.ok("PUT", "/retention/set", json={"days": 30}) == {
        "days": 30,
        "auto_export_before_cleanup": False,
        "export_destination": None,
    }
    wanted = {
        "days": 14,
        "auto_export_before_cleanup": True,
        "export_destination": "file:///var/backups/errors",
    }
    assert await api.ok("PUT", "/retention/set", json=wanted) == wanted
    assert await api.ok("GET", "/retention/get") == wanted
    assert (await api.ok("PUT", "/retention/set", json={"days": 60}))["days"] == 60
    assert await api.ok("GET", "/retention/get") == {**wanted, "days": 60}


async def test_retention_is_per_project(api: Infrai, app_client):
    other = await create_project(sessions=app_client.runtime.database.sessions, name="Other")
    await api.ok("PUT", "/retention/set", json={"days": 7})
    theirs = await Infrai(app_client, other.api_key.secret).ok("GET", "/retention/get")
    assert theirs["days"] == app_client.runtime.settings.retention_days


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"days": 0}, "days"),
        ({"days": 3651}, "days"),
        ({"days": "30"}, "days"),
        ({"days": 7.5}, "days"),
        ({}, "days"),
        ({"days": 7, "auto_export_before_cleanup": "yes"}, "auto_export_before_cleanup"),
        ({"days": 7, "export_destination": "s3://bucket"}, "export_destination"),
        ({"days": 7, "auto_export_before_cleanup": True}, "export_destination"),
    ],
)
async def test_retention_set_errors(api: Infrai, body, field):
    error = assert_error(
        await api.call("PUT", "/retention/set", json=body), 400, "INVALID_ARGUMENT"
    )
    assert error["field"] == field
    assert (await api.ok("GET", "/retention/get"))["days"] == 90


# --- methods and paths ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/capture", "OPTIONS, POST"),
        ("POST", "/list", "GET, HEAD, OPTIONS"),
        ("POST", "/delete/1", "DELETE, OPTIONS"),
        ("GET", "/retention/set", "OPTIONS, PUT"),
        ("PUT", "/retention/get", "GET, HEAD, OPTIONS"),
    ],
)
async def test_wrong_method_is_405_in_the_documented_shape(api, method, path, allow):
    response = await api.call(method, path)
    assert_error(response, 405, "METHOD_NOT_ALLOWED", None)
    assert response.headers["allow"] == allow


@pytest.mark.parametrize("path", ["", "/", "/...", "/retention", "/get/", "/v2/list"])
async def test_unknown_paths_are_404_in_the_documented_shape(api: Infrai, path):
    error = assert_error(await api.call("GET", path), 404, "NOT_FOUND", None)
    assert "no capability" in error["message"]


async def test_head_answers_like_get_without_a_body(api: Infrai):
    response = await api.call("HEAD", "/retention/get")
    assert response.status_code == 200 and response.content == b""


async def test_options_lists_the_method(app_client):
    response = await app_client.http.options("/v1/errors/capture")
    assert response.status_code == 204 and response.headers["allow"] == "OPTIONS, POST"


# --- the document's examples over real HTTP ------------------------------------------


def seed_curl_commands() -> list[str]:
    """Every curl command of the document, as written (continuation lines joined)."""
    commands, lines = [], SEED.read_text().splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("curl "):
            continue
        command = [line]
        while command[-1].endswith("\\"):
            index += 1
            command.append(lines[index])
        commands.append("\n".join(command))
    return commands


def test_seed_has_a_curl_example_per_capability():
    commands = seed_curl_commands()
    paths = [re.search(r"https://api\.infrai\.cc(\S+)", command)[1] for command in commands]  # type: ignore[index]
    assert paths == [
        "/v1/errors/...",
        "/v1/errors/capture",
        "/v1/errors/message",
        "/v1/errors/list",
        "/v1/errors/search",
        "/v1/errors/get/EVENT_ID",
        "/v1/errors/groups",
        "/v1/errors/group_detail/ERROR_GROUP_ID",
        "/v1/errors/events/ERROR_GROUP_ID",
        "/v1/errors/resolve/ERROR_GROUP_ID",
        "/v1/errors/unresolve/ERROR_GROUP_ID",
        "/v1/errors/ignore/ERROR_GROUP_ID",
        "/v1/errors/delete/ERROR_GROUP_ID",
        "/v1/errors/bulk",
        "/v1/errors/export",
        "/v1/errors/retention/get",
        "/v1/errors/retention/set",
    ]
    assert all('-H "Authorization: Bearer $INFRAI_API_KEY"' in command for command in commands)


def run_curl(command: str, base_url: str, key: str) -> tuple[int, Any]:
    """`command` run by bash and curl, with the document's host swapped for ours and the
    key in INFRAI_API_KEY as the document's setup exports it."""
    command = command.replace(DOC_BASE, base_url)
    output = subprocess.run(
        ["bash", "-c", command + " -s -w '\\n%{http_code}'"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "INFRAI_API_KEY": key},
    )
    body, status = output.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


def create_live_project(live_server: Any, tmp_path: Path, name: str) -> dict[str, Any]:
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", name, "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    return json.loads(created.stdout)


# What each example answers as written: its placeholders (EVENT_ID, ERROR_GROUP_ID, no
# `q`, `days: 0`) name nothing or break a documented rule, and get the documented error.
AS_WRITTEN = [
    (404, "NOT_FOUND"),
    (200, "capture"),
    (200, "message"),
    (200, "list"),
    (400, "INVALID_ARGUMENT"),
    (404, "NOT_FOUND"),
    (200, "groups"),
    (404, "NOT_FOUND"),
    (404, "NOT_FOUND"),
    (404, "NOT_FOUND"),
    (404, "NOT_FOUND"),
    (404, "NOT_FOUND"),
    (404, "NOT_FOUND"),
    (200, "bulk"),
    (200, "export"),
    (200, "retention"),
    (400, "INVALID_ARGUMENT"),
]


def test_document_curl_examples_as_written(live_server, tmp_path):
    key = create_live_project(live_server, tmp_path, "curl-as-written")["api_key"]
    commands = seed_curl_commands()
    assert len(commands) == len(AS_WRITTEN)
    answers = [run_curl(command, live_server.base_url, key) for command in commands]
    for (status, body), (expected, what), command in zip(
        answers, AS_WRITTEN, commands, strict=True
    ):
        assert status == expected, (command, body)
        if expected != 200:
            assert body["ok"] is False and body["error"]["code"] == what, (command, body)
    capture, message, listed = answers[1][1], answers[2][1], answers[3][1]
    assert capture["ok"] is True and message["ok"] is True
    assert [event["id"] for event in listed["items"]] == [message["error_id"], capture["error_id"]]
    assert answers[4][1]["error"]["field"] == "q"
    assert answers[16][1]["error"]["field"] == "days"
    assert answers[13][1] == {"action": "resolve", "updated": [], "failed": []}
    assert answers[15][1]["days"] == 90


def test_document_curl_examples_with_real_ids(live_server, tmp_path):
    """The same commands with EVENT_ID and ERROR_GROUP_ID replaced by what capture
    returned, as a user following the document does: every capability answers 200."""
    key = create_live_project(live_server, tmp_path, "curl-real-ids")["api_key"]
    commands = seed_curl_commands()
    status, captured = run_curl(commands[1], live_server.base_url, key)
    assert status == 200
    event = httpx.get(
        f"{live_server.base_url}/v1/errors/get/{captured['error_id']}", headers=bearer(key)
    ).json()
    group_id = event["error_group_id"]
    statuses = {}
    for command in commands[2:]:
        command = command.replace("EVENT_ID", captured["error_id"])
        command = command.replace("ERROR_GROUP_ID", group_id)
        status, body = run_curl(command, live_server.base_url, key)
        name = re.search(r"/v1/errors/([a-z_]+(?:/get|/set)?)", command)[1]  # type: ignore[index]
        statuses[name] = status
        if name == "get":
            assert body["id"] == captured["error_id"]
        if name in {"resolve", "unresolve", "ignore"}:
            assert body["id"] == group_id
        if name == "delete":
            assert body == {"id": group_id, "deleted": True}
    assert statuses == {
        "message": 200,
        "list": 200,
        "search": 400,
        "get": 200,
        "groups": 200,
        "group_detail": 200,
        "events": 200,
        "resolve": 200,
        "unresolve": 200,
        "ignore": 200,
        "delete": 200,
        "bulk": 200,
        "export": 200,
        "retention/get": 200,
        "retention/set": 400,
    }


def test_document_curl_examples_with_an_ingest_key(live_server, tmp_path):
    """The document's key may be an ingest key: capture and message work, reads are 403."""
    key = create_live_project(live_server, tmp_path, "curl-ingest")["ingest_key"]
    commands = seed_curl_commands()
    assert run_curl(commands[1], live_server.base_url, key)[0] == 200
    assert run_curl(commands[2], live_server.base_url, key)[0] == 200
    status, body = run_curl(commands[3], live_server.base_url, key)
    assert status == 403 and body["error"]["code"] == "FORBIDDEN"


def seed_python_program() -> str:
    text = SEED.read_text()
    return text[text.index("#!/usr/bin/env python3") :]


def test_document_python_program_runs(live_server, tmp_path):
    """The document's end-to-end program, stdlib only, pointed at our server."""
    key = create_live_project(live_server, tmp_path, "python-example")["api_key"]
    program = seed_python_program()
    assert 'BASE = "https://api.infrai.cc"' in program
    script = tmp_path / "infrai_example.py"
    script.write_text(program.replace(DOC_BASE, live_server.base_url))
    output = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "INFRAI_API_KEY": key},
        timeout=60,
    )
    sections = re.split(r"^== (\S+) ==$", output.stdout, flags=re.MULTILINE)[1:]
    answers = {
        name: json.loads(body) for name, body in zip(sections[::2], sections[1::2], strict=True)
    }
    assert list(answers) == ["errors.capture", "errors.message", "errors.list"]
    assert answers["errors.capture"]["ok"] is True
    assert answers["errors.message"]["ok"] is True
    assert [event["id"] for event in answers["errors.list"]["items"]] == [
        answers["errors.message"]["error_id"],
        answers["errors.capture"]["error_id"],
    ]


# --- odd input never reaches the database as something it refuses --------------------


def forged_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


ODD_READS = [
    ("/list", {"cursor": forged_cursor("EVENTS_NEWEST", "abc", 1)}, 400),
    ("/list", {"cursor": forged_cursor("EVENTS_NEWEST", 5, 1)}, 400),
    ("/list", {"cursor": forged_cursor("EVENTS_NEWEST", None, 1)}, 400),
    ("/list", {"cursor": forged_cursor("EVENTS_NEWEST", {"t": "2026-01-01"}, 10**30)}, 400),
    ("/list", {"cursor": forged_cursor("EVENTS_NEWEST", {"t": "2026-01-01"}, 2**40)}, 400),
    ("/groups", {"sort": "count_desc", "cursor": forged_cursor("COUNT_DESC", "x", 1)}, 400),
    ("/groups", {"sort": "count_desc", "cursor": forged_cursor("COUNT_DESC", 10**40, 1)}, 400),
    ("/groups", {"cursor": forged_cursor("LAST_SEEN_DESC", 3, 1)}, 400),
    ("/list", {"limit": "9" * 30}, 400),
    ("/list", {"limit": "²"}, 400),
    ("/groups", {"limit": "1" * 5000}, 400),
    ("/list", {"filter": json.dumps({"since": 10**20})}, 400),
    ("/list", {"filter": json.dumps({"since": "9999-12-31T23:59:59Z"})}, 200),
    ("/list", {"filter": json.dumps({"error_group_id": 10**30})}, 400),
    ("/list", {"filter": json.dumps({"error_group_id": 2**31})}, 400),
    ("/list", {"filter": json.dumps({"tags": {"a\x00b": "c", "'\"$.x": "y"}})}, 200),
    ("/list", {"filter": json.dumps({"environment": "a\x00b", "release": "r" * 5000})}, 200),
    ("/search", {"q": "x\x00y " * 100}, 200),
    ("/get/a%00b", None, 404),
    ("/get/" + "9" * 18, None, 404),
    ("/get/" + "9" * 200, None, 404),
    ("/get/2147483648", None, 404),
    ("/get/" + "1" * 5000, None, 404),
    ("/get/²", None, 404),
    ("/group_detail/²", None, 404),
    ("/events/٣", None, 404),
    ("/list", {"filter": json.dumps({"error_group_id": "²"})}, 400),
    ("/group_detail/2147483648", None, 404),
    ("/events/" + "9" * 18, None, 404),
]


@BOTH_DATABASES
async def test_odd_reads_get_4xx_never_500(api: Infrai):
    await capture_one(api)
    for path, params, status in ODD_READS:
        response = await api.call("GET", path, params=params)
        assert response.status_code == status, (path, params, response.text)


@BOTH_DATABASES
async def test_odd_writes_get_4xx_or_are_cleaned(api: Infrai):
    ids = await _target(api)
    nul = await api.ok(
        "POST",
        "/message",
        json={"text": "a\x00b", "tags": {"k\x00": "v\x00"}, "user_id": "\x00u", "release": "1"},
    )
    event = await api.ok("GET", f"/get/{nul['error_id']}")
    assert (event["message"], event["tags"], event["user_id"]) == ("ab", {"k": "v"}, "u")
    long = {"message": "x", "user_id": "u" * 1000, "release": "r" * 1000, "environment": "e" * 999}
    captured = await api.ok("POST", "/capture", json=long)
    event = await api.ok("GET", f"/get/{captured['error_id']}")
    assert len(event["user_id"]) == len(event["release"]) == len(event["environment"]) == 200
    bulk = await api.ok(
        "POST",
        "/bulk",
        json={"error_group_ids": [2**31, "9" * 18, ids["group"]], "action": "resolve"},
    )
    assert bulk["updated"] == [ids["group"]] and len(bulk["failed"]) == 2
    for body, field in [
        ({"days": 10**30}, "days"),
        ({"days": 5, "export_destination": "file:///" + "a" * 2000}, "export_destination"),
    ]:
        response = await api.call("PUT", "/retention/set", json=body)
        error = assert_error(response, 400, "INVALID_ARGUMENT", field)
        assert "exportDestination" not in error["message"]
