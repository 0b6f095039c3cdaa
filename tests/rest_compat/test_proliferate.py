"""`POST /api/v1/errors` exactly as the Proliferate document describes it."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from support import ERRORGRAPH

from app.models import AffectedUser, Event, Group
from app.services.keys import CreatedProject, revoke_project_key

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
