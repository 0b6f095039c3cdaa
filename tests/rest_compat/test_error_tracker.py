"""The Error Tracker API exactly as its document describes it
(`../shared/seeds/003_5d6793c66178ddef.txt`): every documented example and error over
HTTP, the document's environment variables, its 256 KB limit, its MD5 fingerprints and
reopening on regression."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from support import ERRORGRAPH, free_port

from app.cli import GroupingChoice
from app.config import Settings, SettingsError, load_settings
from app.domain.grouping import STRATEGIES
from app.errors import InvalidInput
from app.models import Event, Group, Project
from app.services.keys import CreatedProject, create_project, create_project_key
from app.services.quotas import Quotas

SEED = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "003_5d6793c66178ddef.txt"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "error_tracker"
SERVER_KEY = "et-server-key-0123456789"
SERVER = {"X-API-Key": SERVER_KEY}
LIMIT = 256 * 1024
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/api/users.py", line 42, in create_user\n'
    "    user = validate(payload)\n"
    '  File "/srv/app/api/validation.py", line 17, in validate\n'
    '    raise ValueError("invalid input")\n'
    "ValueError: invalid input\n"
)


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


# --- the document, read as data ---------------------------------------------------------


def seed_text() -> str:
    return SEED.read_text()


def section(title: str) -> str:
    """The document's text under `### {title}`, up to the next heading."""
    text = seed_text()
    start = text.index(f"### {title}\n")
    end = text.find("\n#", start + 4)
    return text[start : end if end != -1 else len(text)]


def json_block(title: str) -> Any:
    match = re.search(r"```json\n(.*?)\n```", section(title), re.DOTALL)
    assert match is not None, title
    return json.loads(match.group(1))


def inline_answers(title: str) -> list[Any]:
    """The one-line JSON answers of a section (`{"status":"created",…}`)."""
    return [json.loads(found) for found in re.findall(r"`(\{[^`]*\})`", section(title))]


def doc_report() -> dict[str, Any]:
    return json_block("POST /api/errors")


def report(**changes: Any) -> dict[str, Any]:
    """The document's example body with a parsable traceback (its own is elided)."""
    body = doc_report() | {"traceback": TRACEBACK}
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


def test_the_document_has_what_these_tests_use():
    assert doc_report()["project"] == "my-app"
    created, existing = inline_answers("POST /api/errors")
    assert created == {"status": "created", "fingerprint": "...", "id": 1}
    assert existing == {"status": "existing", "fingerprint": "...", "count": 5}
    assert set(json_block("GET /api/errors")) == {"errors", "total", "limit", "offset"}
    assert set(json_block("GET /api/errors/{id}")) == {"error", "occurrences"}
    assert inline_answers("POST /api/errors/{id}/resolve") == [{"status": "resolved"}]
    assert inline_answers("GET /api/projects") == [{"projects": ["my-app", "other-app"]}]
    assert inline_answers("GET /health") == [{"status": "ok"}]
    assert "256KB max request body" in seed_text()


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The document's server-wide key, on both databases: the source filter reads JSON,
    and first-use project creation races differently on each."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'errorgraph.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    return Settings(
        database_url=url,
        broadcast_url="memory://",
        api_key=SERVER_KEY,
        _env_file=None,  # type: ignore[call-arg]
    )


async def post(app_client, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return await app_client.http.post("/api/errors", json=body, headers=SERVER | (headers or {}))


async def get(app_client, path: str, **params: Any) -> httpx.Response:
    return await app_client.http.get(path, params=params, headers=SERVER)


async def stored(app_client, model: Any) -> list[Any]:
    async with app_client.runtime.database.sessions() as session:
        return list((await session.scalars(select(model).order_by(model.id))).all())


async def nothing_stored(app_client) -> bool:
    async with app_client.runtime.database.sessions() as session:
        events = await session.scalar(select(func.count()).select_from(Event))
        groups = await session.scalar(select(func.count()).select_from(Group))
        projects = await session.scalar(select(func.count()).select_from(Project))
    return (events, groups, projects) == (0, 0, 0)


# --- POST /api/errors -------------------------------------------------------------------


async def test_document_example_is_created_then_existing(app_client):
    """The document's body as written. Its traceback ("Traceback …\\n  ...") has no frame,
    so the location fingerprint falls back to the type and the normalised message."""
    first = await post(app_client, doc_report())
    assert first.status_code == 201
    fingerprint = md5("my-app:ValueError:invalid input")
    [group] = await stored(app_client, Group)
    assert first.json() == {"status": "created", "fingerprint": fingerprint, "id": group.id}

    for count in (2, 3):
        again = await post(app_client, doc_report())
        assert again.status_code == 200
        assert again.json() == {"status": "existing", "fingerprint": fingerprint, "count": count}


async def test_fingerprint_is_the_md5_of_project_type_file_and_line(app_client):
    response = await post(app_client, report())
    assert response.status_code == 201
    expected = hashlib.md5(b"my-app:ValueError:/srv/app/api/validation.py:17").hexdigest()
    assert response.json()["fingerprint"] == expected

    [project] = await stored(app_client, Project)
    assert (project.name, project.slug, project.grouping_strategy) == (
        "my-app",
        "my-app",
        "location",
    )
    moved = TRACEBACK.replace("line 17", "line 18")
    other = await post(app_client, report(traceback=moved))
    assert other.status_code == 201
    assert other.json()["fingerprint"] == md5("my-app:ValueError:/srv/app/api/validation.py:18")


@pytest.mark.parametrize("name", sorted(path.name for path in FIXTURES.glob("*.json")))
async def test_stack_formats_give_the_documented_fingerprint(app_client, name: str):
    """Python and JavaScript (Chrome V8, Firefox, Safari) stacks, parsed for file and line."""
    case = json.loads((FIXTURES / name).read_text())
    body, expect = case["report"], case["expect"]
    response = await post(app_client, body)
    assert response.status_code == 201, response.text
    text = f"{body['project']}:{body['exception_type']}:{expect['file']}:{expect['line']}"
    assert response.json()["fingerprint"] == md5(text)


async def test_every_field_is_kept_on_the_event(app_client):
    response = await post(app_client, report(source="browser"))
    assert response.status_code == 201
    [event] = await stored(app_client, Event)
    assert event.dialect == "error_tracker"
    assert (event.type, event.level, event.environment) == ("exception", "error", "prod")
    assert (event.exception_type, event.exception_value) == ("ValueError", "invalid input")
    assert event.raw_stacktrace == TRACEBACK
    assert event.url == "/api/users"
    assert event.request == {
        "url": "/api/users",
        "method": "POST",
        "headers": {"Accept": "application/json"},
    }
    assert event.user == {"id": "user-42", "data": {}}
    assert event.extra == {"request_id": "abc123"}
    assert event.tags == {"source": "browser"}
    frames = event.exceptions[-1]["frames"]  # type: ignore[index]
    assert [frame["lineno"] for frame in frames] == [42, 17]


async def test_numeric_user_id_and_minimal_body(app_client):
    response = await post(app_client, {"project": "tiny", "exception_type": "KeyError"})
    assert response.status_code == 201
    again = await post(app_client, {"project": "tiny", "exception_type": "KeyError", "user_id": 7})
    assert again.json()["status"] == "existing"
    events = await stored(app_client, Event)
    assert [event.user for event in events] == [None, {"id": "7", "data": {}}]
    assert [event.tags for event in events] == [{"source": "server"}] * 2
    detail = (await get(app_client, f"/api/errors/{response.json()['id']}")).json()
    assert detail["error"]["message"] == "" and detail["error"]["traceback"] is None


async def test_projects_are_created_once_under_concurrent_first_reports(app_client):
    responses = await asyncio.gather(*(post(app_client, report(project="burst")) for _ in range(8)))
    # Reports that reach the batch writer together with the first all see a new group.
    assert {r.status_code for r in responses} <= {200, 201}
    assert 201 in {r.status_code for r in responses}
    assert len({r.json()["fingerprint"] for r in responses}) == 1
    projects = await stored(app_client, Project)
    assert [(p.name, p.slug) for p in projects] == [("burst", "burst")]
    [group] = await stored(app_client, Group)
    assert group.count == 8


async def test_report_body_may_be_gzip(app_client):
    body = gzip.compress(json.dumps(report()).encode())
    response = await app_client.http.post(
        "/api/errors",
        content=body,
        headers=SERVER | {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 201


async def test_browser_reports_get_a_cors_preflight(app_client):
    response = await app_client.http.options(
        "/api/errors",
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    listed = await app_client.http.get(
        "/api/errors", headers=SERVER | {"Origin": "https://shop.example.com"}
    )
    assert listed.status_code == 200
    assert "access-control-allow-origin" not in listed.headers


# --- GET /api/errors --------------------------------------------------------------------


async def test_list_has_the_documented_shape(app_client):
    created = (await post(app_client, report())).json()
    await post(app_client, report())
    response = await get(app_client, "/api/errors")
    assert response.status_code == 200
    body = response.json()
    documented = json_block("GET /api/errors")
    assert set(body) == set(documented)
    assert (body["total"], body["limit"], body["offset"]) == (1, 50, 0)
    [error] = body["errors"]
    assert set(error) == set(documented["errors"][0])
    assert error == {
        "id": created["id"],
        "fingerprint": created["fingerprint"],
        "project": "my-app",
        "environment": "prod",
        "exception_type": "ValueError",
        "message": "invalid input",
        "count": 2,
        "first_seen": error["first_seen"],
        "last_seen": error["last_seen"],
        "resolved": False,
    }
    pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert re.fullmatch(pattern, error["first_seen"]) and re.fullmatch(pattern, error["last_seen"])


async def test_list_filters(app_client):
    ids = {}
    for name, body in {
        "a": report(project="app-a", environment="prod", message="invalid input"),
        "b": report(
            project="app-a",
            environment="staging",
            exception_type="KeyError",
            message="missing customer",
            traceback=None,
        ),
        "c": report(
            project="app-b",
            exception_type="TypeError",
            message="undefined is not a function",
            traceback=None,
            source="browser",
        ),
    }.items():
        ids[name] = (await post(app_client, body)).json()["id"]
    await app_client.http.post(f"/api/errors/{ids['b']}/resolve", headers=SERVER)

    async def listed(**params: Any) -> list[int]:
        response = await get(app_client, "/api/errors", **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["errors"])
        return sorted(error["id"] for error in body["errors"])

    assert await listed() == sorted(ids.values())
    assert await listed(project="app-a") == [ids["a"], ids["b"]]
    assert await listed(project="nobody") == []
    assert await listed(environment="staging") == [ids["b"]]
    assert await listed(resolved="true") == [ids["b"]]
    assert await listed(resolved="false") == [ids["a"], ids["c"]]
    assert await listed(search="customer") == [ids["b"]]
    assert await listed(search="TypeError") == [ids["c"]]
    assert await listed(search="invalid inp") == [ids["a"]]
    assert await listed(source="browser") == [ids["c"]]
    assert await listed(source="server") == [ids["a"], ids["b"]]
    assert await listed(project="app-a", resolved="false", environment="prod") == [ids["a"]]
    assert await listed(project="", search="") == sorted(ids.values())

    staging = (await get(app_client, "/api/errors", environment="staging")).json()
    assert [error["environment"] for error in staging["errors"]] == ["staging"]


async def test_list_limit_and_offset(app_client):
    for n in range(5):
        await post(app_client, report(exception_type=f"Error{n}", traceback=None))

    async def page(**params: Any) -> dict[str, Any]:
        response = await get(app_client, "/api/errors", **params)
        assert response.status_code == 200, response.text
        return response.json()

    everything = await page()
    newest_first = [error["id"] for error in everything["errors"]]
    assert newest_first == sorted(newest_first, reverse=True)
    two = await page(limit=2, offset=1)
    assert (two["total"], two["limit"], two["offset"]) == (5, 2, 1)
    assert [error["id"] for error in two["errors"]] == newest_first[1:3]
    beyond = await page(offset=10)
    assert (beyond["errors"], beyond["total"]) == ([], 5)
    assert (await page(limit=1000))["limit"] == 200


async def test_list_with_more_than_a_keyset_page(app_client, monkeypatch):
    # 130 reports from one address are more than the document's 100 a minute; paging is
    # what this test is about, so its server counts no addresses.
    monkeypatch.setattr(app_client.runtime.writer, "quotas", Quotas(client_limits={}))
    for n in range(130):
        await post(app_client, report(exception_type=f"Error{n}", traceback=None))
    body = (await get(app_client, "/api/errors", limit=200)).json()
    assert (len(body["errors"]), body["total"]) == (130, 130)


# --- GET /api/errors/{id} ---------------------------------------------------------------


async def test_detail_has_the_error_and_its_latest_five_occurrences(app_client):
    created = (await post(app_client, report(extra={"n": 0}))).json()
    for n in range(1, 7):
        await post(app_client, report(extra={"n": n}, user_id=f"user-{n}"))
    response = await get(app_client, f"/api/errors/{created['id']}")
    assert response.status_code == 200
    body = response.json()
    documented = json_block("GET /api/errors/{id}")
    assert set(body) == set(documented)
    assert set(body["error"]) == set(documented["error"])
    assert body["error"] | {"first_seen": "", "last_seen": ""} == {
        "id": created["id"],
        "fingerprint": created["fingerprint"],
        "project": "my-app",
        "exception_type": "ValueError",
        "message": "invalid input",
        "traceback": TRACEBACK,
        "count": 7,
        "first_seen": "",
        "last_seen": "",
        "resolved": False,
    }
    occurrences = body["occurrences"]
    assert len(occurrences) == 5
    assert all(set(o) == set(documented["occurrences"][0]) for o in occurrences)
    assert [json.loads(o["extra"])["n"] for o in occurrences] == [6, 5, 4, 3, 2]
    newest = occurrences[0]
    assert newest["request_url"] == "/api/users" and newest["request_method"] == "POST"
    assert json.loads(newest["request_headers"]) == {"Accept": "application/json"}
    assert newest["user_id"] == "user-6"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", newest["timestamp"])
    ids = [o["id"] for o in occurrences]
    assert ids == sorted(ids, reverse=True)


# --- POST /api/errors/{id}/resolve and regressions ---------------------------------------


async def test_resolve_then_the_next_occurrence_reopens(app_client):
    created = (await post(app_client, report())).json()
    resolved = await app_client.http.post(f"/api/errors/{created['id']}/resolve", headers=SERVER)
    assert resolved.status_code == 200
    assert resolved.json() == {"status": "resolved"}
    detail = (await get(app_client, f"/api/errors/{created['id']}")).json()
    assert detail["error"]["resolved"] is True
    assert [
        e["id"] for e in (await get(app_client, "/api/errors", resolved="true")).json()["errors"]
    ] == [created["id"]]

    again = await post(app_client, report())
    assert again.status_code == 200
    assert again.json() == {"status": "existing", "fingerprint": created["fingerprint"], "count": 2}
    detail = (await get(app_client, f"/api/errors/{created['id']}")).json()
    assert detail["error"]["resolved"] is False
    [group] = await stored(app_client, Group)
    assert group.status == "unresolved" and group.is_regression


# --- GET /api/projects and /health -----------------------------------------------------


async def test_projects_lists_the_projects_that_reported(app_client):
    assert (await get(app_client, "/api/projects")).json() == {"projects": []}
    await create_project(sessions=app_client.runtime.database.sessions, name="silent")
    for name in ("other-app", "my-app", "other-app"):
        await post(app_client, report(project=name))
    response = await get(app_client, "/api/projects")
    assert response.status_code == 200
    assert response.json() == {"projects": ["my-app", "other-app"]}


@pytest.mark.parametrize("headers", [{}, SERVER, {"X-API-Key": "wrong"}])
async def test_health_answers_as_documented(app_client, headers: dict[str, str]):
    response = await app_client.http.get("/health", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# --- keys -------------------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/api/errors"),
    ("GET", "/api/errors"),
    ("GET", "/api/errors/1"),
    ("POST", "/api/errors/1/resolve"),
    ("GET", "/api/projects"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Missing API key: send it in the X-API-Key header"),
        ({"X-API-Key": ""}, "Missing API key: send it in the X-API-Key header"),
        ({"X-API-Key": "not-the-key"}, "Invalid API key"),
        (
            {"Authorization": f"Bearer {SERVER_KEY}"},
            "Missing API key: send it in the X-API-Key header",
        ),
    ],
)
async def test_missing_or_invalid_key_is_401(app_client, method, path, headers, detail):
    response = await app_client.http.request(method, path, json=report(), headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": detail}
    assert await nothing_stored(app_client)


async def test_revoked_project_key_is_401(app_client, app_project: CreatedProject):
    from app.services.keys import revoke_project_key

    await revoke_project_key(
        sessions=app_client.runtime.database.sessions, key_id=app_project.ingest_key.key.id
    )
    response = await post(
        app_client, report(project=None), {"X-API-Key": app_project.ingest_key.secret}
    )
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid API key"}


async def test_without_a_server_key_only_project_keys_work(settings, app_client, app_project):
    app_client.runtime.settings = settings.model_copy(update={"api_key": None})
    response = await post(app_client, report())
    assert response.status_code == 401
    ingest = {"X-API-Key": app_project.ingest_key.secret}
    assert (await post(app_client, report(project=None), ingest)).status_code == 201


async def test_project_keys_report_to_and_read_their_own_project(
    app_client, app_project: CreatedProject
):
    ingest = {"X-API-Key": app_project.ingest_key.secret}
    api = {"X-API-Key": app_project.api_key.secret}
    mine = await post(app_client, report(project=None), ingest)
    assert mine.status_code == 201
    # The project's own grouping (frames: no line numbers), not the location md5.
    assert re.fullmatch(r"[0-9a-f]{32}", mine.json()["fingerprint"])
    assert mine.json()["fingerprint"] != md5("App project:ValueError:/srv/app/api/validation.py:17")
    named = await post(app_client, report(project="app-project"), ingest)
    assert named.json()["status"] == "existing"
    assert (await post(app_client, report(project="App project"), api)).json()["count"] == 3
    other = (await post(app_client, report(project="elsewhere"))).json()

    wrong = await post(app_client, report(project="elsewhere"), ingest)
    assert wrong.status_code == 403
    assert wrong.json() == {
        "detail": "this key belongs to project 'App project', not 'elsewhere'; "
        "use the server API key to report to other projects"
    }

    async def as_api(method: str, path: str, **params: Any) -> httpx.Response:
        return await app_client.http.request(method, path, params=params, headers=api)

    listed = (await as_api("GET", "/api/errors")).json()
    assert [e["id"] for e in listed["errors"]] == [mine.json()["id"]] and listed["total"] == 1
    assert (await as_api("GET", "/api/errors", project="elsewhere")).json()["total"] == 0
    assert (await as_api("GET", "/api/errors", project="App project")).json()["total"] == 1
    assert (await as_api("GET", "/api/projects")).json() == {"projects": ["App project"]}
    hidden = await as_api("GET", f"/api/errors/{other['id']}")
    assert hidden.status_code == 404 and hidden.json() == {"detail": "Error not found"}
    hidden = await as_api("POST", f"/api/errors/{other['id']}/resolve")
    assert hidden.status_code == 404
    resolved = await as_api("POST", f"/api/errors/{mine.json()['id']}/resolve")
    assert resolved.json() == {"status": "resolved"}


@pytest.mark.parametrize(("method", "path"), ENDPOINTS[1:])
async def test_an_ingest_key_reads_nothing(app_client, app_project: CreatedProject, method, path):
    await post(app_client, report(project=None), {"X-API-Key": app_project.ingest_key.secret})
    response = await app_client.http.request(
        method, path, headers={"X-API-Key": app_project.ingest_key.secret}
    )
    assert response.status_code == 403
    assert "scope" in response.json()["detail"]


async def test_a_read_key_cannot_resolve(app_client, app_project: CreatedProject):
    created = (
        await post(app_client, report(project=None), {"X-API-Key": app_project.ingest_key.secret})
    ).json()
    read = await create_project_key(
        sessions=app_client.runtime.database.sessions,
        project_id=app_project.project.id,
        scopes=["read"],
    )
    headers = {"X-API-Key": read.secret}
    assert (
        await app_client.http.get(f"/api/errors/{created['id']}", headers=headers)
    ).status_code == 200
    response = await app_client.http.post(f"/api/errors/{created['id']}/resolve", headers=headers)
    assert response.status_code == 403
    assert response.json() == {"detail": "this key has no 'write' scope"}


# --- documented and undocumented errors: 4xx with the reason, nothing stored -------------


@pytest.mark.parametrize(
    "path", ["/api/errors/999", "/api/errors/abc", "/api/errors/99999999999999999999999"]
)
async def test_unknown_error_is_404(app_client, path: str):
    for response in (
        await app_client.http.get(path, headers=SERVER),
        await app_client.http.post(path + "/resolve", headers=SERVER),
    ):
        assert response.status_code == 404
        assert response.json() == {"detail": "Error not found"}


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        (report(project=7), ["body", "project"], "string_type"),
        (report(project="   "), ["body", "project"], "value_error"),
        (report(project="x" * 201), ["body", "project"], "string_too_long"),
        (report(exception_type=None), ["body", "exception_type"], "missing"),
        (report(exception_type=""), ["body", "exception_type"], "value_error"),
        (report(exception_type=["ValueError"]), ["body", "exception_type"], "string_type"),
        (report(message=404), ["body", "message"], "string_type"),
        (report(traceback={"frames": []}), ["body", "traceback"], "string_type"),
        (report(environment=True), ["body", "environment"], "string_type"),
        (report(request_headers=["Accept: */*"]), ["body", "request_headers"], "dict_type"),
        (report(extra="abc123"), ["body", "extra"], "dict_type"),
        (report(user_id=["user-42"]), ["body", "user_id"], "string_type"),
        (report(source=1), ["body", "source"], "string_type"),
        ([report()], ["body"], "model_type"),
        ("ValueError", ["body"], "model_type"),
    ],
)
async def test_wrong_types_and_missing_fields_are_422_naming_the_field(app_client, body, loc, kind):
    response = await post(app_client, body)
    assert response.status_code == 422
    details = response.json()["detail"]
    assert any(item["loc"][: len(loc)] == loc and item["type"] == kind for item in details), details
    assert await nothing_stored(app_client)


@pytest.mark.parametrize("field", ["extra", "request_headers"])
@pytest.mark.parametrize("depth", [65, 1000])
async def test_deeply_nested_json_is_422_not_a_crash(app_client, field: str, depth: int):
    nested = '{"a":' * depth + "1" + "}" * depth
    content = f'{{"project": "my-app", "exception_type": "E", "{field}": {nested}}}'
    response = await app_client.http.post("/api/errors", content=content, headers=SERVER)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "too_deep", "loc": ["body", field], "msg": "JSON nested deeper than 64 levels"}
    ]
    assert await nothing_stored(app_client)
    fits = '{"a":' * 63 + "1" + "}" * 63
    content = f'{{"project": "my-app", "exception_type": "E", "{field}": {fits}}}'
    assert (
        await app_client.http.post("/api/errors", content=content, headers=SERVER)
    ).status_code == 201


async def test_the_server_key_needs_a_project(app_client):
    response = await post(app_client, report(project=None))
    assert response.status_code == 422
    [item] = response.json()["detail"]
    assert (item["loc"], item["type"]) == (["body", "project"], "missing")
    assert await nothing_stored(app_client)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "request body is empty"),
        (b"{", "request body is not valid JSON"),
        (b"project=my-app&exception_type=ValueError", "request body is not valid JSON"),
        (b'{"project": "my-app", "exception_type": "Value\xffError"}', "not valid UTF-8"),
        (b'{"project": "my-app", "exception_type": "\\ud800"}', "request body is not valid JSON"),
    ],
)
async def test_bodies_that_are_not_json_are_400(app_client, content: bytes, reason: str):
    response = await app_client.http.post(
        "/api/errors", content=content, headers=SERVER | {"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert reason in response.json()["detail"]
    assert await nothing_stored(app_client)


async def test_unsupported_content_encoding_is_400(app_client):
    response = await app_client.http.post(
        "/api/errors",
        content=json.dumps(report()).encode(),
        headers=SERVER | {"Content-Encoding": "zstd-ish"},
    )
    assert response.status_code == 400
    assert "Content-Encoding" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "loc", "kind"),
    [
        ({"limit": "abc"}, ["query", "limit"], "int_parsing"),
        ({"limit": "0"}, ["query", "limit"], "greater_than_equal"),
        ({"limit": "-5"}, ["query", "limit"], "greater_than_equal"),
        ({"offset": "-1"}, ["query", "offset"], "greater_than_equal"),
        ({"offset": "1e3"}, ["query", "offset"], "int_parsing"),
        ({"offset": str(2**70)}, ["query", "offset"], "less_than_equal"),
        ({"resolved": "maybe"}, ["query", "resolved"], "bool_parsing"),
    ],
)
async def test_bad_query_parameters_are_422_naming_them(app_client, params, loc, kind):
    response = await get(app_client, "/api/errors", **params)
    assert response.status_code == 422
    [item] = response.json()["detail"]
    assert (item["loc"], item["type"]) == (loc, kind)


async def test_query_that_is_not_utf8_is_400(app_client):
    response = await app_client.http.get("/api/errors?search=%ff%fe", headers=SERVER)
    assert response.status_code == 400
    assert response.json() == {"detail": "the query string is not valid UTF-8"}


async def test_nul_and_odd_text_in_filters_is_harmless(app_client):
    await post(app_client, report())
    for params in (
        {"search": "a\x00b"},
        {"project": "\x00"},
        {"source": "'\"); --"},
        {"search": '"*'},
    ):
        response = await get(app_client, "/api/errors", **params)
        assert response.status_code == 200, response.text


# --- the 256 KB body limit -------------------------------------------------------------


def sized_body(size: int) -> bytes:
    """A valid report of exactly `size` bytes (the traceback takes up the rest)."""
    pad = size - len(json.dumps(report()).encode())
    body = json.dumps(report(traceback=TRACEBACK + "#" * pad)).encode()
    assert len(body) == size
    return body


async def test_a_body_of_256_kb_is_accepted(app_client):
    response = await app_client.http.post(
        "/api/errors",
        content=sized_body(LIMIT),
        headers=SERVER | {"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text


async def test_a_body_over_256_kb_is_413(app_client):
    response = await app_client.http.post(
        "/api/errors",
        content=sized_body(LIMIT + 1),
        headers=SERVER | {"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body is larger than {LIMIT} bytes"}
    assert await nothing_stored(app_client)


async def test_a_streamed_body_over_256_kb_is_413(app_client):
    async def chunks():
        for _ in range(5):
            yield b" " * (64 * 1024)

    response = await app_client.http.post(
        "/api/errors", content=chunks(), headers=SERVER | {"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert await nothing_stored(app_client)


async def test_a_gzip_body_that_expands_past_256_kb_is_413(app_client):
    bomb = gzip.compress(sized_body(LIMIT + 1))
    assert len(bomb) < LIMIT
    response = await app_client.http.post(
        "/api/errors",
        content=bomb,
        headers=SERVER | {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 413
    assert "decompressed body is larger" in response.json()["detail"]
    assert await nothing_stored(app_client)


async def test_a_lower_server_limit_wins(settings, app_client):
    app_client.runtime.settings = settings.model_copy(update={"max_body_bytes": 4096})
    response = await app_client.http.post(
        "/api/errors",
        content=sized_body(5000),
        headers=SERVER | {"Content-Type": "application/json"},
    )
    assert response.status_code == 413


# --- settings: the document's variables as aliases ---------------------------------------

ALIASES = ("API_KEY", "DATABASE_PATH", "LOG_LEVEL", "RETENTION_DAYS")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("ERRORGRAPH_") or name.upper() in ALIASES:
            monkeypatch.delenv(name)
    return monkeypatch


def test_document_variables_configure_errorgraph(clean_env: pytest.MonkeyPatch, tmp_path: Path):
    clean_env.setenv("API_KEY", "s3cret")
    clean_env.setenv("DATABASE_PATH", str(tmp_path / "errors.db"))
    clean_env.setenv("LOG_LEVEL", "warn")
    clean_env.setenv("RETENTION_DAYS", "30")
    settings = load_settings(_env_file=None)
    assert isinstance(settings.api_key, SecretStr)
    assert settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'errors.db'}"
    assert settings.sqlite_path == tmp_path / "errors.db"
    assert settings.log_level == "warning"
    assert settings.retention_days == 30


def test_relative_database_path_and_defaults(clean_env: pytest.MonkeyPatch):
    assert load_settings(_env_file=None).api_key is None
    clean_env.setenv("DATABASE_PATH", "./data/errors.db")
    clean_env.setenv("API_KEY", "")
    settings = load_settings(_env_file=None)
    assert settings.database_url == "sqlite+aiosqlite:///./data/errors.db"
    assert settings.sqlite_path == Path("data/errors.db")
    assert settings.api_key is None


def test_errorgraph_names_win_over_the_document_names(clean_env: pytest.MonkeyPatch):
    for name, seed_value, own_value in [
        ("API_KEY", "seed-key", "own-key"),
        ("LOG_LEVEL", "error", "DEBUG"),
        ("RETENTION_DAYS", "30", "45"),
    ]:
        clean_env.setenv(name, seed_value)
        clean_env.setenv(f"ERRORGRAPH_{name}", own_value)
    clean_env.setenv("DATABASE_PATH", "/tmp/ignored.db")
    clean_env.setenv("ERRORGRAPH_DATABASE_URL", "postgres://u:p@db/errors")
    settings = load_settings(_env_file=None)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "own-key"
    assert settings.log_level == "debug"
    assert settings.retention_days == 45
    assert settings.database_url == "postgresql+asyncpg://u:p@db/errors"


def test_document_variables_in_dotenv(clean_env: pytest.MonkeyPatch, tmp_path: Path):
    (tmp_path / ".env").write_text("API_KEY=from-dotenv\nLOG_LEVEL=WARN\nRETENTION_DAYS=7\n")
    settings = load_settings()
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "from-dotenv"
    assert (settings.log_level, settings.retention_days) == ("warning", 7)


def test_python_names_still_work(tmp_path: Path):
    settings = Settings(
        api_key="k",
        log_level="warn",
        retention_days=5,
        database_path=str(tmp_path / "x.db"),
        _env_file=None,  # type: ignore[call-arg]
    )
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"
    assert (settings.log_level, settings.retention_days) == ("warning", 5)
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOG_LEVEL", "loud"),
        ("RETENTION_DAYS", "0"),
        ("RETENTION_DAYS", "many"),
        ("ERRORGRAPH_LOG_LEVEL", "loud"),
        ("ERRORGRAPH_RETENTION_DAYS", "-1"),
    ],
)
def test_invalid_document_variables_are_named(clean_env: pytest.MonkeyPatch, name, value):
    clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    assert f" {name}: " in str(caught.value)


# --- grouping strategy per project --------------------------------------------------------


def test_cli_choices_are_the_grouping_strategies():
    assert {choice.value for choice in GroupingChoice} == set(STRATEGIES)


async def test_create_project_takes_a_grouping_strategy(runtime):
    sessions = runtime.database.sessions
    assert (await create_project(sessions=sessions, name="a")).project.grouping_strategy == "frames"
    located = await create_project(sessions=sessions, name="b", grouping_strategy="location")
    assert located.project.grouping_strategy == "location"
    with pytest.raises(InvalidInput) as caught:
        await create_project(sessions=sessions, name="c", grouping_strategy="lines")
    assert caught.value.field == "grouping_strategy"
    assert "frames, location" in caught.value.message


async def test_a_location_project_made_elsewhere_hashes_its_name(app_client):
    created = await create_project(
        sessions=app_client.runtime.database.sessions, name="Shop API", grouping_strategy="location"
    )
    response = await post(
        app_client, report(project=None), {"X-API-Key": created.ingest_key.secret}
    )
    assert response.json()["fingerprint"] == md5(
        "Shop API:ValueError:/srv/app/api/validation.py:17"
    )


def cli(server: SeedServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ERRORGRAPH, *args],
        env=server.env,
        cwd=server.database.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class SeedServer:
    """errorgraph under uvicorn configured only through the document's variables."""

    base_url: str
    env: dict[str, str]
    database: Path


@pytest.fixture
def seed_server(tmp_path: Path) -> Iterator[SeedServer]:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith("ERRORGRAPH_") and key.upper() not in ALIASES
    }
    database = tmp_path / "data" / "errors.db"
    env.update(
        API_KEY=SERVER_KEY,
        DATABASE_PATH=str(database),
        LOG_LEVEL="warn",
        RETENTION_DAYS="30",
        ERRORGRAPH_PORT=str(port),
        ERRORGRAPH_HOST="127.0.0.1",
    )
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [ERRORGRAPH, "serve"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise RuntimeError(log_path.read_text())
                try:
                    if httpx.get(base_url + "/health/live", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start:\n" + log_path.read_text())
                time.sleep(0.1)
            yield SeedServer(base_url=base_url, env=env, database=database)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def curl(server: SeedServer, *args: str) -> tuple[int, Any]:
    """Run curl; returns the status and the JSON body."""
    done = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_every_endpoint_over_real_http_with_curl(seed_server: SeedServer, tmp_path: Path):
    """The document's headers and example body, sent by curl to a server configured by
    the document's own variables (API_KEY, DATABASE_PATH, LOG_LEVEL=warn, RETENTION_DAYS)."""
    base = seed_server.base_url
    key = ["-H", f"X-API-Key: {SERVER_KEY}"]
    body = json.dumps(report())
    post_args = [*key, "-H", "Content-Type: application/json", "-d", body]

    status, created = curl(seed_server, "-X", "POST", f"{base}/api/errors", *post_args)
    assert status == 201
    fingerprint = md5("my-app:ValueError:/srv/app/api/validation.py:17")
    assert created == {"status": "created", "fingerprint": fingerprint, "id": created["id"]}
    status, existing = curl(seed_server, "-X", "POST", f"{base}/api/errors", *post_args)
    assert (status, existing) == (
        200,
        {"status": "existing", "fingerprint": fingerprint, "count": 2},
    )

    status, listed = curl(
        seed_server, f"{base}/api/errors?project=my-app&resolved=false&limit=10", *key
    )
    assert status == 200
    assert (listed["total"], listed["limit"], listed["offset"]) == (1, 10, 0)
    assert listed["errors"][0]["fingerprint"] == fingerprint

    status, detail = curl(seed_server, f"{base}/api/errors/{created['id']}", *key)
    assert status == 200 and detail["error"]["count"] == 2 and len(detail["occurrences"]) == 2

    status, resolved = curl(
        seed_server, "-X", "POST", f"{base}/api/errors/{created['id']}/resolve", *key
    )
    assert (status, resolved) == (200, {"status": "resolved"})
    status, reopened = curl(seed_server, "-X", "POST", f"{base}/api/errors", *post_args)
    assert (status, reopened["count"]) == (200, 3)

    assert curl(seed_server, f"{base}/api/projects", *key) == (200, {"projects": ["my-app"]})
    assert curl(seed_server, f"{base}/health") == (200, {"status": "ok"})
    assert curl(seed_server, f"{base}/api/projects") == (
        401,
        {"detail": "Missing API key: send it in the X-API-Key header"},
    )
    big = tmp_path / "big.json"
    big.write_bytes(sized_body(LIMIT + 1))
    status, too_large = curl(
        seed_server,
        "-X",
        "POST",
        f"{base}/api/errors",
        *key,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        f"@{big}",
    )
    assert (status, too_large) == (413, {"detail": f"request body is larger than {LIMIT} bytes"})

    # DATABASE_PATH is where the data went; RETENTION_DAYS is the default retention.
    with sqlite3.connect(seed_server.database) as db:
        assert db.execute("SELECT name, grouping_strategy FROM project").fetchall() == [
            ("my-app", "location")
        ]
        assert db.execute("SELECT count(*) FROM event").fetchone() == (3,)
    token = cli(seed_server, "token", "create", "--scope", "admin", "--json")
    assert token.returncode == 0, token.stderr
    answer = httpx.post(
        f"{base}/graphql",
        json={"query": "{ retention { days } }"},
        headers={"Authorization": f"Bearer {json.loads(token.stdout)['token']}"},
    ).json()
    assert answer == {"data": {"retention": {"days": 30}}}


def test_cli_project_create_with_location_grouping(seed_server: SeedServer):
    created = cli(seed_server, "project", "create", "Shop API", "--grouping", "location", "--json")
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert info["grouping"] == "location"
    default = cli(seed_server, "project", "create", "Other", "--json")
    assert json.loads(default.stdout)["grouping"] == "frames"
    wrong = cli(seed_server, "project", "create", "Bad", "--grouping", "lines")
    assert wrong.returncode == 2
    assert "lines" in wrong.stderr

    status, answer = curl(
        seed_server,
        "-X",
        "POST",
        f"{seed_server.base_url}/api/errors",
        "-H",
        f"X-API-Key: {info['ingest_key']}",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps(report(project="Shop API")),
    )
    assert status == 201
    assert answer["fingerprint"] == md5("Shop API:ValueError:/srv/app/api/validation.py:17")
