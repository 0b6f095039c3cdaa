"""`POST /api/v3/projects/{project_id}/notices`: Airbrake's notice API, version 3."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from support import ERRORGRAPH

from app.models import Event, Group
from app.services.keys import CreatedProject, create_project, create_project_key, revoke_project_key

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "airbrake"

EVENT_QUERY = """
query ($id: ID!) {
  event(id: $id) {
    eventId source level environment release serverName transaction url userAgent
    request extra contexts userData platform
    user { externalId email name }
    exception { type value frames { filename function lineno inApp contextLine preContext postContext } }
    group { id title culprit }
  }
}
"""


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def notices_path(project: CreatedProject) -> str:
    return f"/api/v3/projects/{project.project.id}/notices"


async def stored_events(app_client) -> list[Event]:
    async with app_client.runtime.database.sessions() as session:
        return list((await session.scalars(select(Event).order_by(Event.id))).all())


def test_documented_example_over_real_http(live_server, tmp_path):
    """The reference's example notice, sent by curl as the reference's command does, then
    read back through the GraphQL API."""
    created = json.loads(
        subprocess.run(
            [ERRORGRAPH, "project", "create", "airbrake", "--json"],
            env=live_server.env,
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        ).stdout
    )
    url = f"{live_server.base_url}/api/v3/projects/{created['id']}/notices?key={created['ingest_key']}"
    output = subprocess.run(
        [
            "curl",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            f"@{FIXTURES / 'create_notice_v3.json'}",
            url,
            "-s",
            "-w",
            "\n%{http_code}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    body, status = output.stdout.rsplit("\n", 1)
    assert status == "201", output.stdout
    answer = json.loads(body)
    assert set(answer) == {"id", "url"}

    response = httpx.post(
        live_server.base_url + "/graphql",
        json={"query": EVENT_QUERY, "variables": {"id": answer["id"]}},
        headers={"Authorization": f"Bearer {created['token']}"},
    )
    event = response.json()["data"]["event"]
    assert answer["url"] == f"{live_server.base_url}/#/issues/{event['group']['id']}"
    assert event["eventId"] == answer["id"]
    assert event["source"] == "airbrake"
    assert (event["environment"], event["release"], event["level"]) == (
        "production",
        "1.1.1",
        "ERROR",
    )
    assert event["serverName"] == "production-rails-server-1"
    assert event["platform"] == "ruby"
    # errors[0] surfaced, errors[1] is its cause: the chain is stored root cause first.
    assert [(e["type"], e["value"]) for e in event["exception"]] == [
        ("error2", "message2"),
        ("error1", "message1"),
    ]
    frame = event["exception"][1]["frames"][0]
    assert (frame["filename"], frame["function"], frame["lineno"]) == (
        "backtrace file",
        "backtrace function",
        10,
    )
    # The code hunk holds lines 1 and 2, not line 10: nothing to show as context.
    assert frame["contextLine"] is None
    assert event["group"]["title"] == "error1: message1"
    assert event["transaction"] == "/pricing"
    assert event["request"] == {"method": "POST"}
    assert event["user"] == {"externalId": "12345", "email": "root@root.com", "name": "root"}
    assert event["extra"] == {
        "params": {"page": "3", "sort": "name", "direction": "asc"},
        "session": {"basketId": "123", "userId": "456"},
        "environment": {"PORT": "443", "CODE_NAME": "gorilla"},
    }
    assert event["contexts"] == {
        "runtime": {"name": "Ruby 2.1.1"},
        "os": {"name": "Linux 3.5.0-21-generic #32-Ubuntu SMP Tue Dec 11 18:51:59 UTC 2012 x86_64"},
        "notifier": {"name": "notifier name", "version": "notifier version", "url": "notifier url"},
        "airbrake": {
            "url:": "http://some-site.com/example",
            "rootDirectory": "/home/app-root-directory",
        },
    }


async def test_nested_cause_with_bearer_key(app_client, app_project: CreatedProject, gql):
    response = await app_client.http.post(
        notices_path(app_project),
        json=fixture("nested_cause_with_code.json"),
        headers={"Authorization": f"Bearer {app_project.ingest_key.secret}"},
    )
    assert response.status_code == 201, response.text
    data = await gql(EVENT_QUERY, {"id": response.json()["id"]})
    event = data["event"]
    assert [e["type"] for e in event["exception"]] == [
        "Gateway::Declined",
        "Checkout::PaymentFailed",
    ]
    primary = event["exception"][-1]
    # The backtrace came innermost first; frames are stored outermost first.
    assert [f["function"] for f in primary["frames"]] == [
        "send_action",
        "create",
        "charge!",
        "rescue in charge!",
    ]
    assert [f["inApp"] for f in primary["frames"]] == [False, True, True, True]
    crash = primary["frames"][-1]
    assert crash["contextLine"] == '    raise PaymentFailed, "payment for order #{order.id} failed"'
    assert crash["preContext"] == [
        "    gateway.charge(order.total_cents, order.card_token)",
        "  rescue Gateway::Declined => e",
    ]
    assert crash["postContext"] == ["  end", "end"]
    assert event["level"] == "FATAL"
    assert event["transaction"] == "orders#create"
    assert event["release"] == "2024.06.1"
    assert event["environment"] == "staging"
    assert event["url"] == "https://shop.example.com/orders"
    assert event["userAgent"].startswith("Mozilla/5.0 (X11")
    assert event["request"] == {"url": "https://shop.example.com/orders", "method": "POST"}
    assert event["userData"] == {
        "id": "77",
        "email": "ada@example.com",
        "username": "ada",
        "ip_address": "203.0.113.7",
        "data": {"plan": "pro"},
    }
    assert event["extra"] == {"params": {"order": {"id": "1042"}}, "session": {"cart_id": "c-19"}}
    assert event["contexts"]["airbrake"] == {
        "rootDirectory": "/srv/shop/current",
        "revision": "9f1c2ab",
    }
    assert event["group"]["culprit"] == "rescue in charge! (checkout.rb)"


async def test_same_error_twice_is_one_group(app_client, app_project: CreatedProject):
    path = notices_path(app_project) + f"?key={app_project.ingest_key.secret}"
    first = await app_client.http.post(path, json=fixture("create_notice_v3.json"))
    second = await app_client.http.post(path, json=fixture("create_notice_v3.json"))
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert first.json()["url"] == second.json()["url"]
    async with app_client.runtime.database.sessions() as session:
        groups = list((await session.scalars(select(Group))).all())
    assert [group.count for group in groups] == [2]


async def test_gzip_body_and_write_key(app_client, app_project: CreatedProject):
    body = gzip.compress(json.dumps(fixture("create_notice_v3.json")).encode())
    response = await app_client.http.post(
        notices_path(app_project) + f"?key={app_project.api_key.secret}",
        content=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 201, response.text


async def test_browser_preflight(app_client, app_project: CreatedProject):
    response = await app_client.http.options(
        notices_path(app_project),
        headers={
            "Origin": "https://shop.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"


# --- refusals ----------------------------------------------------------------------------


async def test_no_key_is_401(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        notices_path(app_project), json=fixture("create_notice_v3.json")
    )
    assert response.status_code == 401
    assert "key" in response.json()["message"]


@pytest.mark.parametrize("how", ["query", "bearer"])
async def test_unknown_key_is_401(app_client, app_project: CreatedProject, how: str):
    path, headers = notices_path(app_project), {}
    if how == "query":
        path += "?key=pk_nope"
    else:
        headers = {"Authorization": "Bearer pk_nope"}
    response = await app_client.http.post(
        path, json=fixture("create_notice_v3.json"), headers=headers
    )
    assert response.status_code == 401
    assert response.json() == {"message": "invalid key"}


async def test_revoked_key_is_401(app_client, app_project: CreatedProject):
    await revoke_project_key(
        sessions=app_client.runtime.database.sessions, key_id=app_project.ingest_key.key.id
    )
    response = await app_client.http.post(
        notices_path(app_project) + f"?key={app_project.ingest_key.secret}",
        json=fixture("create_notice_v3.json"),
    )
    assert response.status_code == 401


async def test_two_different_keys_are_401(app_client, app_project: CreatedProject):
    response = await app_client.http.post(
        notices_path(app_project) + f"?key={app_project.ingest_key.secret}",
        json=fixture("create_notice_v3.json"),
        headers={"Authorization": f"Bearer {app_project.api_key.secret}"},
    )
    assert response.status_code == 401
    assert "differ" in response.json()["message"]


async def test_project_in_url_must_be_the_keys(app_client, app_project: CreatedProject):
    other = await create_project(sessions=app_client.runtime.database.sessions, name="other")
    for project_id in (other.project.id, 999_999):
        response = await app_client.http.post(
            f"/api/v3/projects/{project_id}/notices?key={app_project.ingest_key.secret}",
            json=fixture("create_notice_v3.json"),
        )
        assert response.status_code == 403
        assert response.json()["field"] == "project_id"
    assert await stored_events(app_client) == []


async def test_read_only_key_is_403(app_client, app_project: CreatedProject):
    read = await create_project_key(
        sessions=app_client.runtime.database.sessions,
        project_id=app_project.project.id,
        scopes=["read"],
    )
    response = await app_client.http.post(
        notices_path(app_project) + f"?key={read.secret}", json=fixture("create_notice_v3.json")
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "body"),
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b"{}", "errors"),
        (b'{"errors": []}', "errors"),
        (b'{"errors": "boom"}', "errors"),
        (b'{"errors": [{}]}', "errors"),
        (b'{"errors": [{"type": 5}]}', "errors[0].type"),
        (b'{"errors": [{"type": "E", "backtrace": {"file": "a"}}]}', "errors[0].backtrace"),
        (
            b'{"errors": [{"type": "E", "backtrace": [{"file": "a", "line": "ten"}]}]}',
            "errors[0].backtrace[0].line",
        ),
        (
            b'{"errors": [{"type": "E", "backtrace": [{"code": {"1": ["x"]}}]}]}',
            "errors[0].backtrace[0].code.1",
        ),
        (b'{"errors": [{"type": "E"}], "context": []}', "context"),
        (b'{"errors": [{"type": "E"}], "context": {"severity": "loud"}}', "context.severity"),
        (b'{"errors": [{"type": "E"}], "context": {"user": "bob"}}', "context.user"),
        (b'{"errors": [{"type": "E"}], "params": [1]}', "params"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    app_client, app_project: CreatedProject, body: bytes, field: str
):
    response = await app_client.http.post(
        notices_path(app_project) + f"?key={app_project.ingest_key.secret}",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["field"] == field
    assert answer["message"].startswith(field) or field == "body"
    assert await stored_events(app_client) == []


async def test_body_over_the_limit_is_413(app_client, app_project: CreatedProject):
    notice = fixture("create_notice_v3.json")
    notice["params"] = {"blob": "x" * (app_client.runtime.settings.max_body_bytes + 1)}
    response = await app_client.http.post(
        notices_path(app_project) + f"?key={app_project.ingest_key.secret}", json=notice
    )
    assert response.status_code == 413
    assert "message" in response.json()


async def test_long_and_odd_values_are_stored_not_refused(app_client, app_project: CreatedProject):
    """Values past EventIn's limits are cut, NUL characters dropped: never a 500."""
    notice = {
        "errors": [
            {
                "type": "E\x00rror",
                "message": "m" * 20_000,
                "backtrace": [{"file": "f" * 2000, "line": -1, "column": 0, "function": ""}] * 300,
            }
        ],
        "context": {"user": {"id": 12}, "language": "go1.22.3", "severity": "ALERT"},
    }
    response = await app_client.http.post(
        notices_path(app_project) + f"?key={app_project.ingest_key.secret}", json=notice
    )
    assert response.status_code == 201, response.text
    [event] = await stored_events(app_client)
    assert event.exception_type == "Error"
    assert event.platform == "go"
    assert event.level == "fatal"
    assert len(event.exceptions[0]["frames"]) == 250  # type: ignore[index]
