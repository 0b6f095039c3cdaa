"""Alerts as people use them: rules through GraphQL and the `errorgraph alert` command,
and a real server sending to a real SMTP server and a real HTTP receiver — the Error
Tracker document's ALERT_EMAILS through the Postmark API, a retry after the receiver
failed, a dead channel while ingest answers 202, and two processes sending once."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from receivers import HttpReceiver, Inbox, http_receiver, smtp_server
from support import (
    ERRORGRAPH,
    GQL,
    AppClient,
    cli_env,
    free_port,
    ingest,
    make_event,
    running_server,
)

from app.config import Settings
from app.services.keys import CreatedProject, create_api_token

RULE_FIELDS = (
    "id projectId name trigger threshold windowMinutes channel target options enabled managed"
)


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    async with http_receiver() as receiver:
        yield receiver


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    async with smtp_server() as inbox:
        yield inbox


# --- GraphQL -------------------------------------------------------------------------


async def test_rules_through_graphql(gql: GQL, app_project: CreatedProject, receiver: HttpReceiver):
    project_id = str(app_project.project.id)
    created = await gql(
        f"""mutation($input: AlertRuleInput!) {{ createAlertRule(input: $input) {{ {RULE_FIELDS} }} }}""",
        {
            "input": {
                "projectId": project_id,
                "name": "busy",
                "trigger": "FREQUENCY",
                "threshold": 50,
                "windowMinutes": 5,
                "channel": "WEBHOOK",
                "target": receiver.url("/hook"),
                "options": {"headers": {"X-Token": "t"}},
            }
        },
    )
    rule = created["createAlertRule"]
    assert rule == {
        "id": rule["id"],
        "projectId": project_id,
        "name": "busy",
        "trigger": "FREQUENCY",
        "threshold": 50,
        "windowMinutes": 5,
        "channel": "WEBHOOK",
        "target": receiver.url("/hook"),
        "options": {"headers": {"X-Token": "t"}},
        "enabled": True,
        "managed": False,
    }

    update = f"""mutation($id: ID!, $input: AlertRulePatch!) {{ updateAlertRule(id: $id, input: $input) {{ {RULE_FIELDS} }} }}"""
    changed = (await gql(update, {"id": rule["id"], "input": {"threshold": 10}}))["updateAlertRule"]
    assert (changed["threshold"], changed["windowMinutes"], changed["name"]) == (10, 5, "busy")
    changed = (await gql(update, {"id": rule["id"], "input": {"trigger": "NEW_ISSUE"}}))[
        "updateAlertRule"
    ]
    assert (changed["trigger"], changed["threshold"], changed["windowMinutes"]) == (
        "NEW_ISSUE",
        None,
        None,
    )
    refused = await gql.error(update, {"id": rule["id"], "input": {"target": "mailto:x"}})
    assert refused["extensions"] == {"code": "BAD_USER_INPUT", "field": "target"}

    listed = await gql(
        f"query($p: ID!) {{ alertRules(projectId: $p) {{ {RULE_FIELDS} }} }}", {"p": project_id}
    )
    assert listed["alertRules"] == [changed]

    refused = await gql.error(
        "mutation($input: AlertRuleInput!) { createAlertRule(input: $input) { id } }",
        {
            "input": {
                "projectId": project_id,
                "trigger": "FREQUENCY",
                "channel": "SLACK",
                "target": receiver.url("/s"),
            }
        },
    )
    assert refused["extensions"] == {"code": "BAD_USER_INPUT", "field": "threshold"}

    deleted = await gql(
        "mutation($id: ID!) { deleteAlertRule(id: $id) { id deleted } }", {"id": rule["id"]}
    )
    assert deleted["deleteAlertRule"] == {"id": rule["id"], "deleted": True}
    missing = await gql.error('mutation { deleteAlertRule(id: "999") { id } }')
    assert missing["extensions"]["code"] == "NOT_FOUND"


async def test_rules_need_admin_on_the_project(
    gql: GQL, app_client: AppClient, app_project: CreatedProject
):
    sessions = app_client.runtime.database.sessions
    reader = await create_api_token(sessions=sessions, scopes=["read"], label="reader")
    project_id = str(app_project.project.id)
    query = "query($p: ID!) { alertRules(projectId: $p) { id } }"
    assert (await gql.error(query, {"p": project_id}, token=reader.secret))["extensions"][
        "code"
    ] == "FORBIDDEN"
    assert (await gql.error(query, {"p": project_id}, token=None))["extensions"][
        "code"
    ] == "UNAUTHENTICATED"
    # The delivery log is for readers.
    log = await gql(
        "query($p: ID!) { alertDeliveries(projectId: $p) { totalCount } }",
        {"p": project_id},
        token=reader.secret,
    )
    assert log["alertDeliveries"]["totalCount"] == 0


async def test_deliveries_through_graphql(
    gql: GQL, app_client: AppClient, app_project: CreatedProject, receiver: HttpReceiver
):
    project_id = str(app_project.project.id)
    for path in ("/hook", "/slack"):
        await gql(
            "mutation($input: AlertRuleInput!) { createAlertRule(input: $input) { id } }",
            {
                "input": {
                    "projectId": project_id,
                    "trigger": "NEW_ISSUE",
                    "channel": "SLACK" if path == "/slack" else "WEBHOOK",
                    "target": receiver.url(path),
                }
            },
        )
    [result] = await ingest(app_client, app_project, make_event(1))
    await receiver.wait_for("/hook")
    await receiver.wait_for("/slack")
    assert app_client.runtime.alerts is not None
    await app_client.runtime.alerts.idle()
    data = await gql(
        """query($p: ID!) { alertDeliveries(projectId: $p, first: 1) {
            totalCount pageInfo { hasNextPage endCursor }
            edges { node { kind status attempts lastError sentAt group { id title } } } } }""",
        {"p": project_id},
    )
    deliveries = data["alertDeliveries"]
    assert deliveries["totalCount"] == 2 and deliveries["pageInfo"]["hasNextPage"]
    [edge] = deliveries["edges"]
    assert edge["node"]["kind"] == "new_issue" and edge["node"]["status"] == "SENT"
    assert edge["node"]["attempts"] == 1 and edge["node"]["lastError"] is None
    assert edge["node"]["group"]["id"] == str(result.group_id)


# --- The command line ----------------------------------------------------------------


def run(settings: Settings, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ERRORGRAPH, *args],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_alert_commands(settings: Settings, tmp_path: Path):
    created = run(settings, "project", "create", "Shop", "--json", cwd=tmp_path)
    assert created.returncode == 0, created.stderr

    added = run(
        settings,
        *("alert", "add", "--project", "shop", "--trigger", "frequency", "--threshold", "100"),
        *("--window", "5", "--channel", "webhook", "--target", "https://hooks.example.com/x"),
        *("--header", "Authorization: Bearer abc", "--name", "busy", "--json"),
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr
    rule = json.loads(added.stdout)
    assert (rule["trigger"], rule["threshold"], rule["window_minutes"]) == ("frequency", 100, 5)

    human = run(
        settings,
        *("alert", "add", "-p", "shop", "--trigger", "new_issue", "--channel", "email"),
        *("--target", "ops@example.com, dev@example.com"),
        cwd=tmp_path,
    )
    assert human.returncode == 0, human.stderr
    assert "new_issue → email ops@example.com, dev@example.com" in human.stdout

    bad = run(
        settings,
        *("alert", "add", "-p", "shop", "--trigger", "new_issue", "--channel", "slack"),
        *("--target", "not-a-url"),
        cwd=tmp_path,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("errorgraph: error: target must be an http(s) URL")

    listed = run(settings, "alert", "list", "-p", "shop", cwd=tmp_path)
    assert (
        "more than 100 events in 5 min → webhook https://hooks.example.com/x  busy" in listed.stdout
    )
    assert len(listed.stdout.splitlines()) == 2

    removed = run(settings, "alert", "remove", str(rule["id"]), cwd=tmp_path)
    assert removed.returncode == 0 and f"Alert rule {rule['id']} removed." in removed.stdout
    listed = run(settings, "alert", "list", "-p", "shop", "--json", cwd=tmp_path)
    assert [r["channel"] for r in json.loads(listed.stdout)] == ["email"]
    again = run(settings, "alert", "remove", str(rule["id"]), cwd=tmp_path)
    assert again.returncode == 1 and "no alert rule" in again.stderr


# --- A real server -------------------------------------------------------------------


def fast_retries(**extra: str) -> dict[str, str]:
    return {
        "ERRORGRAPH_ALERT_SEND_TIMEOUT": "1",
        "ERRORGRAPH_ALERT_RETRY_SECONDS": "1",
        "ERRORGRAPH_ALERT_SWEEP_SECONDS": "0.2",
        "ERRORGRAPH_LOG_LEVEL": "warning",
        **extra,
    }


async def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = await asyncio.to_thread(
        subprocess.run,
        [ERRORGRAPH, *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_error_tracker_alert_emails_through_postmark_and_smtp(
    settings: Settings, tmp_path: Path, receiver: HttpReceiver, inbox: Inbox
):
    """Configured as the Error Tracker document says, a new error is mailed to
    ALERT_EMAILS through Postmark, even when Postmark fails once; a rule added on the
    command line mails through SMTP too."""
    env = fast_retries(
        API_KEY="server-key",
        ALERT_EMAILS="ops@example.com",
        POSTMARK_API_TOKEN="pm-token",
        POSTMARK_FROM_EMAIL="errors@example.com",
        ERRORGRAPH_POSTMARK_API_URL=receiver.base_url,
        ERRORGRAPH_SMTP_HOST="127.0.0.1",
        ERRORGRAPH_SMTP_PORT=str(inbox.port),
        ERRORGRAPH_SMTP_FROM="errorgraph@example.com",
        ERRORGRAPH_SMTP_STARTTLS="false",
    )
    receiver.failures = 1
    with running_server(settings, tmp_path, env) as server:
        project = await cli(server.env, "project", "create", "my-app")
        await cli(
            server.env,
            *("alert", "add", "-p", project["slug"], "--trigger", "new_issue"),
            *("--channel", "email", "--target", "dev@example.com"),
        )
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            response = await http.post(
                "/api/errors",
                headers={"X-API-Key": "server-key"},
                json={
                    "project": "my-app",
                    "exception_type": "ValueError",
                    "message": "invalid input",
                    "traceback": 'Traceback (most recent call last):\n  File "app.py", line 3, in main\nValueError: invalid input',
                },
            )
            assert response.status_code == 201, response.text
            [mail] = await receiver.wait_for("/email")
            assert receiver.failed == 1  # the first try was answered 500
            assert mail.headers["x-postmark-server-token"] == "pm-token"
            assert (mail.body["From"], mail.body["To"]) == ("errors@example.com", "ops@example.com")
            assert "ValueError" in mail.body["Subject"] and "my-app" in mail.body["Subject"]
            assert "invalid input" in mail.body["TextBody"]

            [(recipients, message)] = await inbox.wait_for(1)
            assert recipients == ["dev@example.com"]
            assert "ValueError" in message["Subject"]

            again = await http.post(
                "/api/errors",
                headers={"X-API-Key": "server-key"},
                json={
                    "project": "my-app",
                    "exception_type": "ValueError",
                    "message": "invalid input",
                    "traceback": 'Traceback (most recent call last):\n  File "app.py", line 3, in main\nValueError: invalid input',
                },
            )
            assert again.json()["status"] == "existing"
            log = await http.post(
                "/graphql",
                headers={"Authorization": f"Bearer {project['token']}"},
                json={
                    "query": f'{{ alertDeliveries(projectId: "{project["id"]}") {{ edges {{ node {{ kind status attempts }} }} }} }}'
                },
            )
        nodes = [edge["node"] for edge in log.json()["data"]["alertDeliveries"]["edges"]]
        assert sorted((n["status"], n["attempts"]) for n in nodes) == [("SENT", 1), ("SENT", 2)]
        assert len(receiver.on("/email")) == 1 and len(inbox.messages) == 1


async def test_a_dead_channel_while_ingest_answers_202(settings: Settings, tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}/hook"
    with running_server(settings, tmp_path, fast_retries()) as server:
        project = await cli(server.env, "project", "create", "Shop")
        await cli(
            server.env,
            "alert",
            "add",
            "-p",
            "shop",
            "--trigger",
            "new_issue",
            "--channel",
            "webhook",
            "--target",
            dead,
        )
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            for i in range(5):
                response = await http.post(
                    "/api/v1/errors",
                    json={
                        "api_key": project["ingest_key"],
                        "event_id": f"dead-{i}",
                        "timestamp": "2026-03-01T12:00:00Z",
                        "type": "exception",
                        "exception": {
                            "type": "TypeError",
                            "message": "boom",
                            "stack": f"TypeError: boom\n    at handler{i} (app.js:1:1)",
                        },
                    },
                )
                assert response.status_code == 202, response.text
            query = f'{{ alertDeliveries(projectId: "{project["id"]}") {{ edges {{ node {{ status attempts lastError }} }} }} }}'
            async with asyncio.timeout(20):
                while True:
                    log = await http.post(
                        "/graphql",
                        headers={"Authorization": f"Bearer {project['token']}"},
                        json={"query": query},
                    )
                    nodes = [
                        edge["node"] for edge in log.json()["data"]["alertDeliveries"]["edges"]
                    ]
                    if len(nodes) == 5 and all(n["attempts"] >= 2 for n in nodes):
                        break
                    await asyncio.sleep(0.2)
            assert all(
                n["status"] in {"PENDING", "FAILED"} and "ConnectError" in n["lastError"]
                for n in nodes
            )
            assert (await http.get("/health")).status_code == 200


async def test_two_processes_send_each_alert_once(
    postgres_url: str, tmp_path: Path, receiver: HttpReceiver
):
    """Both processes receive every message (PostgreSQL pub/sub); one webhook call per issue."""
    shared = Settings(database_url=postgres_url, broadcast_url=postgres_url, _env_file=None)  # type: ignore[call-arg]
    env = fast_retries()
    with (
        running_server(shared, tmp_path, env, name="a") as a,
        running_server(shared, tmp_path, env, name="b") as b,
    ):
        project = await cli(a.env, "project", "create", "Scale")
        await cli(
            a.env,
            "alert",
            "add",
            "-p",
            "scale",
            "--trigger",
            "new_issue",
            "--channel",
            "webhook",
            "--target",
            receiver.url("/hook"),
        )
        async with httpx.AsyncClient() as http:
            for i in range(6):
                server = (a, b)[i % 2]
                response = await http.post(
                    server.base_url + "/api/v1/errors",
                    json={
                        "api_key": project["ingest_key"],
                        "event_id": f"scale-{i}",
                        "timestamp": "2026-03-01T12:00:00Z",
                        "type": "exception",
                        "exception": {
                            "type": "TypeError",
                            "message": "boom",
                            "stack": f"TypeError: boom\n    at handler{i % 3} (app.js:1:1)",
                        },
                    },
                )
                assert response.status_code == 202, response.text
        await receiver.wait_for("/hook", 3)
        # Each delivery is recorded before it is sent: three rows mean three sends.
        query = f'{{ alertDeliveries(projectId: "{project["id"]}") {{ totalCount edges {{ node {{ status }} }} }} }}'
        async with httpx.AsyncClient() as http:
            log = await http.post(
                b.base_url + "/graphql",
                headers={"Authorization": f"Bearer {project['token']}"},
                json={"query": query},
            )
        deliveries = log.json()["data"]["alertDeliveries"]
        assert deliveries["totalCount"] == 3
        assert {edge["node"]["status"] for edge in deliveries["edges"]} == {"SENT"}
        assert len(receiver.on("/hook")) == 3
        assert len({r.body["group"]["id"] for r in receiver.on("/hook")}) == 3
