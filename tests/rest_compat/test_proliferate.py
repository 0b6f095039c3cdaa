"""`POST /api/v1/errors` and `/api/v1/errors/batch` exactly as the Proliferate document
describes them."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from support import ERRORGRAPH

from app.errors import Unavailable
from app.models import AffectedUser, Event, Group
from app.services.keys import CreatedProject, create_project, revoke_project_key

SEED = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "001_faaaded8e773b5f6.txt"


def full_event(api_key: str, **changes: object) -> dict:
    """The document's first example, field for field."""
    body = {
        "api_key": api_key,
        "event_id": "evt_1234567890abcdef",
        "timestamp": "2025-01-15T10:30:00.123Z",
        "type": "exception",
        "level": "error",
        "environment": "production",
        "release": "v1.2.3",
        "url": "https://example.com/dashboard",
        "user_agent": "Mozilla/5.0...",
        "exception": {
            "type": "TypeError",
            "message": "Cannot read property 'foo' of undefined",
            "stack": "TypeError: Cannot read property 'foo' of undefined\n"
            "    at processData (app.js:42:15)\n    at handleClick (app.js:120:5)",
        },
        "user": {"id": "user_abc123", "email": "[email protected]"},
        "account": {"id": "acct_xyz789", "name": "Acme Corp"},
        "session_id": "sess_abcdef123456",
        "window_id": "win_ghijkl789012",
        "breadcrumbs": [
            {
                "timestamp": 1736938195000,
                "category": "navigation",
                "message": "Navigated to /dashboard",
                "level": "info",
            },
        ],
        "extra": {"component": "Dashboard", "props": {"view": "overview"}},
    }
    body.update(changes)
    return body


async def test_accepts_the_documented_event(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        "/api/v1/errors", json=full_event(app_project.ingest_key.secret)
    )
    assert response.status_code == 202
    assert response.json() == {"event_id": "evt_1234567890abcdef"}

    async with app_client.runtime.database.sessions() as session:
        event = (await session.scalars(select(Event))).one()
        group = await session.get(Group, event.group_id)
        user = (await session.scalars(select(AffectedUser))).one()
    assert event.event_id == "evt_1234567890abcdef"
    assert event.dialect == "proliferate"
    assert (event.environment, event.release, event.level) == ("production", "v1.2.3", "error")
    assert event.url == "https://example.com/dashboard"
    assert event.session_id == "sess_abcdef123456" and event.window_id == "win_ghijkl789012"
    assert event.account == {"id": "acct_xyz789", "name": "Acme Corp", "data": {}}
    assert event.extra == {"component": "Dashboard", "props": {"view": "overview"}}
    assert event.breadcrumbs[0]["category"] == "navigation"  # type: ignore[index]
    assert [f["function"] for f in event.exceptions[0]["frames"]] == [  # type: ignore[index]
        "handleClick",
        "processData",
    ]
    assert group is not None and group.title == "TypeError: Cannot read property 'foo' of undefined"
    assert (user.external_id, user.email) == ("user_abc123", "[email protected]")


async def test_invalid_and_revoked_keys_get_401(app_client, app_project: CreatedProject):
    bad = await app_client.http.post("/api/v1/errors", json=full_event("pk_nope"))
    assert bad.status_code == 401
    assert bad.json() == {"detail": "Invalid API key"}

    await revoke_project_key(
        sessions=app_client.runtime.database.sessions, key_id=app_project.ingest_key.key.id
    )
    revoked = await app_client.http.post(
        "/api/v1/errors", json=full_event(app_project.ingest_key.secret)
    )
    assert revoked.status_code == 401
    assert revoked.json() == {"detail": "Invalid API key"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_id": None}, "event_id"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"type": "crash"}, "type"),
        ({"api_key": None}, "api_key"),
    ],
)
async def test_bad_fields_are_named(app_client, app_project: CreatedProject, change, field):
    body = full_event(app_project.ingest_key.secret)
    for key, value in change.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    response = await app_client.http.post("/api/v1/errors", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert ["body", field] in [item["loc"] for item in detail]


async def test_exception_required_for_exception_type(app_client, app_project: CreatedProject):
    body = full_event(app_project.ingest_key.secret)
    del body["exception"]
    response = await app_client.http.post("/api/v1/errors", json=body)
    assert response.status_code == 422
    assert "exception is required" in response.json()["detail"][0]["msg"]

    message = full_event(app_project.ingest_key.secret, type="message")
    del message["exception"]
    response = await app_client.http.post("/api/v1/errors", json=message)
    assert response.status_code == 422
    assert "message is required" in response.json()["detail"][0]["msg"]

    message["message"] = "Checkout took 31s"
    response = await app_client.http.post("/api/v1/errors", json=message)
    assert response.status_code == 202


async def test_not_json_and_too_large(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        "/api/v1/errors", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]

    huge = full_event(app_project.ingest_key.secret, extra={"blob": "x" * 2_000_000})
    response = await app_client.http.post("/api/v1/errors", json=huge)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


async def test_resend_is_idempotent(app_client, app_project: CreatedProject):
    body = full_event(app_project.ingest_key.secret)
    first = await app_client.http.post("/api/v1/errors", json=body)
    second = await app_client.http.post("/api/v1/errors", json=body)
    assert first.status_code == second.status_code == 202
    async with app_client.runtime.database.sessions() as session:
        assert len((await session.scalars(select(Event))).all()) == 1


def _seed_curl_commands() -> list[str]:
    """The curl examples of the document for the single endpoint, as written."""
    text = SEED.read_text()
    commands = []
    for block in text.split("curl -X POST ")[1:]:
        command = "curl -X POST " + block.split("\n\n")[0].split("\nEndpoint")[0]
        command = command.split("\nCheck the dashboard")[0]
        if "/api/v1/errors/batch" in command:
            continue
        commands.append(command.strip())
    return commands


@pytest.mark.parametrize("index", [0, 1])
def test_document_curl_examples_work_over_real_http(live_server, index: int, tmp_path):
    """Each curl example of the document, run by curl itself against a real uvicorn."""
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "curl", "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    key = json.loads(created.stdout)["ingest_key"]
    command = _seed_curl_commands()[index]
    command = command.replace("https://api.proliferate.com", live_server.base_url)
    command = command.replace("pk_abc123def456ghi789", key).replace("YOUR_API_KEY", key)
    output = subprocess.run(
        ["bash", "-c", command + " -s -w '\\n%{http_code}'"],
        capture_output=True,
        text=True,
        check=True,
    )
    body, status = output.stdout.rsplit("\n", 1)
    assert status == "202", output.stdout
    assert "event_id" in json.loads(body)
    listed = httpx.get(live_server.base_url + "/health").json()
    assert listed == {"status": "ok"}


def test_seed_has_the_examples():
    commands = _seed_curl_commands()
    assert len(commands) == 2
    for command in commands:
        words = shlex.split(command.replace("\\\n", " "))
        assert words[:4] == ["curl", "-X", "POST", "https://api.proliferate.com/api/v1/errors"]


# --- POST /api/v1/errors/batch ----------------------------------------------------------


def batch_event(api_key: str, event_id: str, exception_type: str, message: str) -> dict:
    """One element of the document's batch example."""
    return {
        "api_key": api_key,
        "event_id": event_id,
        "timestamp": "2025-01-15T10:30:00Z",
        "type": "exception",
        "exception": {"type": exception_type, "message": message, "stack": "..."},
    }


async def stored_event_ids(app_client) -> list[str]:
    async with app_client.runtime.database.sessions() as session:
        return sorted((await session.scalars(select(Event.event_id))).all())


async def test_batch_accepts_the_documented_example(app_client, app_project: CreatedProject):
    key = app_project.ingest_key.secret
    response = await app_client.http.post(
        "/api/v1/errors/batch",
        json=[
            batch_event(key, "evt_001", "TypeError", "Cannot read property 'x' of undefined"),
            batch_event(key, "evt_002", "ReferenceError", "foo is not defined"),
        ],
    )
    assert response.status_code == 202
    assert response.json() == {
        "processed": 2,
        "results": [
            {"event_id": "evt_001", "status": "ok"},
            {"event_id": "evt_002", "status": "ok"},
        ],
    }
    assert await stored_event_ids(app_client) == ["evt_001", "evt_002"]
    async with app_client.runtime.database.sessions() as session:
        titles = sorted((await session.scalars(select(Group.title))).all())
    assert titles == [
        "ReferenceError: foo is not defined",
        "TypeError: Cannot read property 'x' of undefined",
    ]


async def test_batch_partial_success_rejects_an_invalid_key(
    app_client, app_project: CreatedProject
):
    """The document's "Partial Success": the bad event is rejected, the good one stored."""
    response = await app_client.http.post(
        "/api/v1/errors/batch",
        json=[
            batch_event(app_project.ingest_key.secret, "evt_001", "TypeError", "x"),
            batch_event("pk_not_a_key", "evt_002", "ReferenceError", "foo is not defined"),
        ],
    )
    assert response.status_code == 202
    assert response.json() == {
        "processed": 2,
        "results": [
            {"event_id": "evt_001", "status": "ok"},
            {"event_id": "evt_002", "status": "rejected", "reason": "Invalid API key"},
        ],
    }
    assert await stored_event_ids(app_client) == ["evt_001"]


async def test_batch_rejects_each_invalid_event_with_its_reason(
    app_client, app_project: CreatedProject
):
    key = app_project.ingest_key.secret
    no_timestamp = batch_event(key, "evt_no_time", "TypeError", "x")
    del no_timestamp["timestamp"]
    nameless = batch_event(key, "evt_nameless", "TypeError", "x")
    nameless["exception"] = {"stack": "not a stack trace anyone writes"}
    wrong_type = full_event(key, event_id="evt_bad_user", user={"id": "u1", "email": ["a", "b"]})
    response = await app_client.http.post(
        "/api/v1/errors/batch",
        json=[
            no_timestamp,
            42,
            {**batch_event(key, "evt_bad_level", "E", "x"), "level": "loud"},
            nameless,
            wrong_type,
            batch_event(key, "evt_fine", "TypeError", "x"),
        ],
    )
    assert response.status_code == 202
    results = response.json()["results"]
    assert response.json()["processed"] == 6
    assert [result["status"] for result in results] == ["rejected"] * 5 + ["ok"]
    assert [result["event_id"] for result in results] == [
        "evt_no_time",
        None,
        "evt_bad_level",
        "evt_nameless",
        "evt_bad_user",
        "evt_fine",
    ]
    assert results[0]["reason"].startswith("timestamp: Field required")
    assert "valid dictionary" in results[1]["reason"]
    assert "level 'loud' is not one of" in results[2]["reason"]
    assert "exception needs a type, a message or a stack trace" in results[3]["reason"]
    assert results[4]["reason"].startswith("user.email:")
    assert await stored_event_ids(app_client) == ["evt_fine"]


async def test_batch_limit_is_100_events(app_client, app_project: CreatedProject):
    key = app_project.ingest_key.secret
    too_many = [batch_event(key, f"evt_{n:03}", "TypeError", f"n{n}") for n in range(101)]
    response = await app_client.http.post("/api/v1/errors/batch", json=too_many)
    assert response.status_code == 413
    assert response.json() == {"detail": "a batch holds at most 100 events; this one has 101"}
    assert await stored_event_ids(app_client) == []

    response = await app_client.http.post("/api/v1/errors/batch", json=too_many[:100])
    assert response.status_code == 202
    assert response.json()["processed"] == 100
    assert {result["status"] for result in response.json()["results"]} == {"ok"}
    assert len(await stored_event_ids(app_client)) == 100


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (b'{"api_key": "pk_x"}', 422, "valid list"),
        (b"[]", 422, "at least 1 item"),
        (b"[{not json", 400, "not valid JSON"),
        (b"", 400, "request body is empty"),
        (b'[{"api_key": "\xff\xfe"}]', 400, "not valid JSON"),
    ],
)
async def test_batch_bad_bodies(app_client, app_project, body: bytes, status: int, expected: str):
    response = await app_client.http.post(
        "/api/v1/errors/batch", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert expected in json.dumps(response.json())
    assert await stored_event_ids(app_client) == []


async def test_batch_body_over_the_size_limit_is_413(app_client, app_project: CreatedProject):
    event = full_event(app_project.ingest_key.secret, extra={"blob": "x" * 2_000_000})
    response = await app_client.http.post("/api/v1/errors/batch", json=[event])
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert await stored_event_ids(app_client) == []


async def test_batch_makes_one_ingest_call_per_project(
    app_client, app_project: CreatedProject, monkeypatch
):
    from rest_compat import proliferate

    other = await create_project(sessions=app_client.runtime.database.sessions, name="Other")
    calls: list[tuple[int, list[str]]] = []
    real = proliferate.ingest_events

    async def counting(*, writer, project, events, key_id):
        calls.append((project.id, [event.event_id for event in events]))
        return await real(writer=writer, project=project, events=events, key_id=key_id)

    monkeypatch.setattr(proliferate, "ingest_events", counting)
    ours, theirs = app_project.ingest_key.secret, other.ingest_key.secret
    response = await app_client.http.post(
        "/api/v1/errors/batch",
        json=[
            batch_event(ours, "a1", "TypeError", "x"),
            batch_event(theirs, "b1", "TypeError", "x"),
            batch_event(ours, "a2", "RangeError", "y"),
            batch_event(theirs, "b2", "TypeError", "x"),
        ],
    )
    assert response.status_code == 202
    assert {result["status"] for result in response.json()["results"]} == {"ok"}
    assert sorted(calls) == sorted(
        [(app_project.project.id, ["a1", "a2"]), (other.project.id, ["b1", "b2"])]
    )
    async with app_client.runtime.database.sessions() as session:
        rows = (await session.execute(select(Event.event_id, Event.project_id))).all()
    assert sorted(rows) == [
        ("a1", app_project.project.id),
        ("a2", app_project.project.id),
        ("b1", other.project.id),
        ("b2", other.project.id),
    ]


async def test_batch_repeated_event_id_is_stored_once(app_client, app_project: CreatedProject):
    event = batch_event(app_project.ingest_key.secret, "evt_same", "TypeError", "x")
    response = await app_client.http.post("/api/v1/errors/batch", json=[event, event])
    assert response.status_code == 202
    assert [result["status"] for result in response.json()["results"]] == ["ok", "ok"]
    assert await stored_event_ids(app_client) == ["evt_same"]


async def test_batch_answers_503_when_nothing_could_be_stored(
    app_client, app_project: CreatedProject, monkeypatch
):
    from rest_compat import proliferate

    async def unavailable(**_kwargs):
        raise Unavailable("the server is shutting down")

    monkeypatch.setattr(proliferate, "ingest_events", unavailable)
    event = batch_event(app_project.ingest_key.secret, "evt_001", "TypeError", "x")
    response = await app_client.http.post("/api/v1/errors/batch", json=[event])
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "the server is shutting down"}


async def test_single_exception_without_anything_naming_it_is_422(
    app_client, app_project: CreatedProject
):
    body = full_event(app_project.ingest_key.secret, exception={"stack": "..."})
    response = await app_client.http.post("/api/v1/errors", json=body)
    assert response.status_code == 422
    assert "exception needs a type" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("path", ["/api/v1/errors", "/api/v1/errors/batch"])
async def test_cors_preflight_and_simple_requests(app_client, app_project, path: str):
    preflight = await app_client.http.options(
        path,
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type"

    event = full_event(app_project.ingest_key.secret)
    response = await app_client.http.post(
        path,
        json=event if path == "/api/v1/errors" else [event],
        headers={"Origin": "https://app.example.com"},
    )
    assert response.status_code == 202
    assert response.headers["access-control-allow-origin"] == "*"

    plain = await app_client.http.options(path)
    assert plain.status_code == 204
    assert plain.headers["allow"] == "OPTIONS, POST"
    assert await stored_event_ids(app_client) == ["evt_1234567890abcdef"]


async def test_get_is_not_allowed(app_client):
    response = await app_client.http.get("/api/v1/errors/batch")
    assert response.status_code == 405


def _seed_batch_curl_command() -> str:
    text = SEED.read_text()
    start = text.index("curl -X POST https://api.proliferate.com/api/v1/errors/batch")
    return text[start:].split("\n\nEndpoint")[0].strip()


def test_document_batch_curl_example_works_over_real_http(live_server, tmp_path):
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "curl-batch", "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    key = json.loads(created.stdout)["ingest_key"]
    command = _seed_batch_curl_command()
    command = command.replace("https://api.proliferate.com", live_server.base_url)
    command = command.replace("pk_abc123def456ghi789", key)
    output = subprocess.run(
        ["bash", "-c", command + " -s -w '\\n%{http_code}'"],
        capture_output=True,
        text=True,
        check=True,
    )
    body, status = output.stdout.rsplit("\n", 1)
    assert status == "202", output.stdout
    assert json.loads(body) == {
        "processed": 2,
        "results": [
            {"event_id": "evt_001", "status": "ok"},
            {"event_id": "evt_002", "status": "ok"},
        ],
    }
