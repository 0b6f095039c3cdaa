"""Mutations over real HTTP: status changes (and ingest honouring them), bulk actions,
retention, export in both formats with the streamed download, capture, projects, keys."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from support import GQL, IngestResult, ingest, make_event

GROUP_STATE = "id status isRegression resolvedAt resolvedInRelease ignoreUntil ignoreUntilCount"


async def group_state(gql: GQL, group_id: int) -> dict:
    data = await gql(
        f"query($id: ID!) {{ group(id: $id) {{ {GROUP_STATE} count }} }}", {"id": str(group_id)}
    )
    return data["group"]


async def test_resolve_unresolve_and_regression(
    gql: GQL, populated: list[IngestResult], app_client, app_project
):
    group_id = populated[0].group_id
    resolved = await gql(
        f"mutation($id: ID!) {{ resolveGroup(id: $id) {{ {GROUP_STATE} }} }}", {"id": str(group_id)}
    )
    assert resolved["resolveGroup"]["status"] == "RESOLVED"
    assert resolved["resolveGroup"]["resolvedAt"] is not None

    await ingest(app_client, app_project, make_event(1))
    state = await group_state(gql, group_id)
    assert (state["status"], state["isRegression"], state["count"]) == ("UNRESOLVED", True, 6)

    await gql("mutation($id: ID!) { resolveGroup(id: $id) { id } }", {"id": str(group_id)})
    unresolved = await gql(
        f"mutation($id: ID!) {{ unresolveGroup(id: $id) {{ {GROUP_STATE} }} }}",
        {"id": str(group_id)},
    )
    assert unresolved["unresolveGroup"]["status"] == "UNRESOLVED"
    assert unresolved["unresolveGroup"]["resolvedAt"] is None


async def test_resolve_in_next_release(gql: GQL, populated, app_client, app_project):
    group_id = populated[0].group_id  # its events carry release 1.0
    data = await gql(
        f"mutation($id: ID!) {{ resolveGroup(id: $id, inNextRelease: true) {{ {GROUP_STATE} }} }}",
        {"id": str(group_id)},
    )
    assert data["resolveGroup"]["resolvedInRelease"] == "1.0"
    await ingest(app_client, app_project, make_event(1, release="1.0"))
    assert (await group_state(gql, group_id))["status"] == "RESOLVED"
    await ingest(app_client, app_project, make_event(1, release="1.1"))
    assert (await group_state(gql, group_id))["status"] == "UNRESOLVED"


async def test_ignore_conditions_reopen(gql: GQL, populated, app_client, app_project):
    group_id = str(populated[0].group_id)
    data = await gql(
        f"mutation($id: ID!) {{ ignoreGroup(id: $id, untilCount: 2) {{ {GROUP_STATE} }} }}",
        {"id": group_id},
    )
    assert (data["ignoreGroup"]["status"], data["ignoreGroup"]["ignoreUntilCount"]) == (
        "IGNORED",
        2,
    )
    await ingest(app_client, app_project, make_event(1))
    assert (await group_state(gql, int(group_id)))["status"] == "IGNORED"
    await ingest(app_client, app_project, make_event(1))
    assert (await group_state(gql, int(group_id)))["status"] == "UNRESOLVED"

    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    data = await gql(
        f"mutation($id: ID!, $until: DateTime) {{ ignoreGroup(id: $id, until: $until) "
        f"{{ {GROUP_STATE} }} }}",
        {"id": group_id, "until": until},
    )
    assert data["ignoreGroup"]["ignoreUntil"] == until
    await ingest(app_client, app_project, make_event(1))
    assert (await group_state(gql, int(group_id)))["status"] == "IGNORED"

    error = await gql.error(
        "mutation($id: ID!) { ignoreGroup(id: $id, untilUserCount: 0) { id } }", {"id": group_id}
    )
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "untilUserCount"}


async def test_delete_group(gql: GQL, populated):
    group_id = str(populated[0].group_id)
    data = await gql("mutation($id: ID!) { deleteGroup(id: $id) { id deleted } }", {"id": group_id})
    assert data["deleteGroup"] == {"id": group_id, "deleted": True}
    assert (await gql("query($id: ID!) { group(id: $id) { id } }", {"id": group_id}))[
        "group"
    ] is None
    events = await gql(
        'query($g: ID) { events(groupId: $g) { totalCount } search: events(search: "Error1") { totalCount } }',
        {"g": group_id},
    )
    assert events == {"events": {"totalCount": 0}, "search": {"totalCount": 0}}


@pytest.mark.parametrize(
    ("action", "status"),
    [("RESOLVE", "RESOLVED"), ("IGNORE", "IGNORED"), ("UNRESOLVE", "UNRESOLVED"), ("DELETE", None)],
)
async def test_bulk_actions(gql: GQL, populated, action: str, status: str | None):
    ids = sorted({str(r.group_id) for r in populated})
    if action == "UNRESOLVE":
        await gql(
            "mutation($ids: [ID!]!) { bulkUpdateGroups(ids: $ids, action: RESOLVE) { updatedCount } }",
            {"ids": ids},
        )
    data = await gql(
        "mutation($ids: [ID!]!, $action: BulkAction!) { bulkUpdateGroups(ids: $ids, action: $action)"
        " { action updated updatedCount failed { id reason } } }",
        {"ids": [*ids, "999999", "nope"], "action": action},
    )
    result = data["bulkUpdateGroups"]
    assert result["action"] == action
    assert sorted(result["updated"]) == ids and result["updatedCount"] == 3
    assert sorted(f["id"] for f in result["failed"]) == ["999999", "nope"]
    listed = await gql("{ groups { totalCount edges { node { status } } } }")
    if status is None:
        assert listed["groups"]["totalCount"] == 0
    else:
        assert {e["node"]["status"] for e in listed["groups"]["edges"]} == {status}


async def test_set_retention(gql: GQL, app_project, tmp_path):
    project_id = str(app_project.project.id)
    data = await gql(
        "mutation($p: ID, $d: String) { setRetention(projectId: $p, days: 30, "
        "autoExportBeforeCleanup: true, exportDestination: $d) { projectId days "
        "autoExportBeforeCleanup exportDestination isDefault } }",
        {"p": project_id, "d": f"file://{tmp_path}"},
    )
    assert data["setRetention"] == {
        "projectId": project_id,
        "days": 30,
        "autoExportBeforeCleanup": True,
        "exportDestination": f"file://{tmp_path}",
        "isDefault": False,
    }
    read = await gql(
        "query($p: ID) { retention(projectId: $p) { days isDefault } }", {"p": project_id}
    )
    assert read["retention"] == {"days": 30, "isDefault": False}
    for days, field in [(0, "days"), (5000, "days")]:
        error = await gql.error(
            f"mutation($p: ID) {{ setRetention(projectId: $p, days: {days}) {{ days }} }}",
            {"p": project_id},
        )
        assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": field}
    error = await gql.error(
        'mutation($p: ID) { setRetention(projectId: $p, days: 5, exportDestination: "s3://x") { days } }',
        {"p": project_id},
    )
    assert error["extensions"]["field"] == "exportDestination"
    # The server default needs a token not limited to projects.
    error = await gql.error("mutation { setRetention(days: 10) { days } }")
    assert error["extensions"]["code"] == "FORBIDDEN"


EXPORT = """mutation($format: ExportFormat!, $g: ID, $since: DateTime) {
  exportEvents(format: $format, groupId: $g, since: $since) {
    format rowCount truncated content downloadUrl expiresAt } }"""


async def test_export_json_and_csv(gql: GQL, populated, app_client, app_project):
    group_id = str(populated[0].group_id)
    data = (await gql(EXPORT, {"format": "JSON", "g": group_id}))["exportEvents"]
    rows = json.loads(data["content"])
    assert (data["rowCount"], data["truncated"], len(rows)) == (5, False, 5)
    assert {row["group_id"] for row in rows} == {int(group_id)}
    assert rows[0]["exception_type"] == "Error1" and rows[0]["tags"] == {"browser": "Firefox"}

    data = (await gql(EXPORT, {"format": "CSV"}))["exportEvents"]
    table = list(csv.DictReader(io.StringIO(data["content"])))
    assert data["rowCount"] == len(table) == 8
    assert table[0]["event_id"] == populated[0].event_id
    assert json.loads(table[0]["tags"]) == {"browser": "Firefox"}

    # The download streams every row, for a credential that can read them.
    path = data["downloadUrl"].split("127.0.0.1:8000", 1)[1]
    headers = {"Authorization": f"Bearer {app_project.token.secret}"}
    download = await app_client.http.get(path, headers=headers)
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert download.text == data["content"]
    denied = await app_client.http.get(path)
    assert denied.status_code == 401
    missing = await app_client.http.get("/export/0123", headers=headers)
    assert missing.status_code == 404


async def test_export_inline_limit_and_download_of_everything(gql: GQL, app_client, app_project):
    await ingest(app_client, app_project, *[make_event(1) for _ in range(1005)])
    data = (await gql(EXPORT, {"format": "JSON"}))["exportEvents"]
    assert (data["rowCount"], data["truncated"]) == (1000, True)
    assert len(json.loads(data["content"])) == 1000
    path = data["downloadUrl"].split("127.0.0.1:8000", 1)[1]
    download = await app_client.http.get(
        path, headers={"Authorization": f"Bearer {app_project.token.secret}"}
    )
    assert len(json.loads(download.text)) == 1005


CAPTURE_EXCEPTION = """mutation($input: CaptureExceptionInput!) {
  captureException(input: $input) { eventId id groupId status group { title count } } }"""


async def test_capture_exception_and_message(gql: GQL, app_project):
    project_id = str(app_project.project.id)
    stack = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/views.py", line 12, in checkout\n'
        "    total = price / qty\n"
        "ZeroDivisionError: division by zero"
    )
    first = await gql(
        CAPTURE_EXCEPTION,
        {
            "input": {
                "projectId": project_id,
                "type": "ZeroDivisionError",
                "stacktrace": stack,
                "eventId": "cap-1",
                "tags": {"server": "web-1"},
                "user": {"id": "u1"},
            }
        },
    )
    result = first["captureException"]
    assert (result["eventId"], result["status"]) == ("cap-1", "created")
    assert result["group"] == {"title": "ZeroDivisionError: division by zero", "count": 1}
    again = await gql(
        CAPTURE_EXCEPTION,
        {
            "input": {
                "projectId": project_id,
                "type": "ZeroDivisionError",
                "stacktrace": stack.replace("12", "40"),
            }
        },
    )
    assert again["captureException"]["groupId"] == result["groupId"]
    assert again["captureException"]["status"] == "existing"

    event = await gql(
        'query { event(id: "cap-1") { source exception { frames { function lineno } } tags user { externalId } } }'
    )
    assert event["event"] == {
        "source": "graphql",
        "exception": [{"frames": [{"function": "checkout", "lineno": 12}]}],
        "tags": {"server": "web-1"},
        "user": {"externalId": "u1"},
    }
    message = await gql(
        "mutation($input: CaptureMessageInput!) { captureMessage(input: $input) { status group { title level } } }",
        {"input": {"projectId": project_id, "message": "Cache warmed in 30s", "level": "WARNING"}},
    )
    assert message["captureMessage"] == {
        "status": "created",
        "group": {"title": "Cache warmed in 30s", "level": "WARNING"},
    }
    error = await gql.error(
        CAPTURE_EXCEPTION, {"input": {"projectId": project_id, "type": "E", "eventId": "x" * 300}}
    )
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "event_id" in error["message"]


async def test_api_tokens_listed_and_revoked(gql: GQL, app_client, app_project):
    from app.services.keys import create_api_token

    sessions = app_client.runtime.database.sessions
    project_id = app_project.project.id
    wide = await create_api_token(sessions=sessions, scopes=["admin"], label="everything")
    narrow = await create_api_token(
        sessions=sessions, scopes=["read"], label="ci", project_ids=[project_id]
    )
    query = "{ apiTokens { id label prefix scopes projectIds isActive revokedAt } }"
    # The project's admin token sees the tokens limited to its project, not the wide one.
    seen = (await gql(query))["apiTokens"]
    assert [row["label"] for row in seen] == [app_project.token.token.label, "ci"]
    assert seen[1]["scopes"] == ["READ"] and seen[1]["projectIds"] == [str(project_id)]
    assert narrow.secret.startswith(seen[1]["prefix"])
    assert all(narrow.secret not in str(row) for row in seen)
    everything = (await gql(query, token=wide.secret))["apiTokens"]
    assert {row["label"] for row in everything} >= {"everything", "ci"}
    assert next(r for r in everything if r["label"] == "everything")["projectIds"] is None

    revoke = "mutation($id: ID!) { revokeApiToken(id: $id) { id isActive revokedAt } }"
    error = await gql.error(revoke, {"id": str(wide.token.id)})
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert (await gql("{ projects { id } }", token=wide.secret))["projects"]
    error = await gql.error(revoke, {"id": str(app_project.token.token.id)}, token=narrow.secret)
    assert error["extensions"]["code"] == "FORBIDDEN"  # a read token revokes nothing
    assert (await gql("{ projects { id } }", token=narrow.secret))["projects"]
    revoked = (await gql(revoke, {"id": str(narrow.token.id)}))["revokeApiToken"]
    assert revoked["isActive"] is False and revoked["revokedAt"]
    error = await gql.error("{ projects { id } }", token=narrow.secret)
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    error = await gql.error(revoke, {"id": "999999"})
    assert error["extensions"]["code"] == "NOT_FOUND"


async def test_projects_and_keys(gql: GQL, app_client, app_project):
    # Project-limited admin tokens cannot create projects; an unlimited one can.
    error = await gql.error('mutation { createProject(name: "Other") { dsn } }')
    assert error["extensions"]["code"] == "FORBIDDEN"
    from app.services.keys import create_api_token

    admin = await create_api_token(sessions=app_client.runtime.database.sessions, scopes=["admin"])
    created = await gql(
        'mutation { createProject(name: "Other shop") { project { id slug } ingestKey apiKey dsn token } }',
        token=admin.secret,
    )
    info = created["createProject"]
    assert info["project"]["slug"] == "other-shop"
    assert info["dsn"] == f"http://{info['ingestKey']}@127.0.0.1:8000/{info['project']['id']}"
    # The new project's token sees only it.
    projects = await gql("{ projects { slug } }", token=info["token"])
    assert projects["projects"] == [{"slug": "other-shop"}]

    project_id = str(app_project.project.id)
    made = await gql(
        'mutation($p: ID!) { createProjectKey(projectId: $p, scopes: [READ], label: "ci") '
        "{ secret dsn key { id prefix scopes label isActive } } }",
        {"p": project_id},
    )
    key = made["createProjectKey"]
    assert key["key"]["scopes"] == ["READ"] and key["key"]["isActive"]
    assert key["secret"].startswith(key["key"]["prefix"])
    # The new read key works as a bearer credential, for its project only.
    listed = await gql("{ projects { id } }", token=key["secret"])
    assert listed["projects"] == [{"id": project_id}]
    keys = await gql(
        "query($p: ID!) { projectKeys(projectId: $p) { id isActive } }", {"p": project_id}
    )
    assert len(keys["projectKeys"]) == 3

    revoked = await gql(
        "mutation($id: ID!) { revokeProjectKey(id: $id) { isActive revokedAt } }",
        {"id": key["key"]["id"]},
    )
    assert revoked["revokeProjectKey"]["isActive"] is False
    error = await gql.error("{ projects { id } }", token=key["secret"])
    assert error["extensions"]["code"] == "UNAUTHENTICATED"


async def test_create_api_token(gql: GQL, app_client, app_project):
    """An admin creates tokens through the API as `errorgraph token create` does; one whose
    own token is limited to projects only creates tokens limited to some of them."""
    from app.services.keys import create_api_token

    project_id = str(app_project.project.id)
    create = """mutation($scopes: [TokenScope!]!, $label: String! = "", $projectIds: [ID!]) {
        createApiToken(scopes: $scopes, label: $label, projectIds: $projectIds) {
            secret token { id label prefix scopes projectIds isActive }
        }
    }"""
    # The project's admin token: a wider token than its own is refused.
    error = await gql.error(create, {"scopes": ["READ"]})
    assert error["extensions"] == {"code": "FORBIDDEN", "field": "projectIds"}
    made = (await gql(create, {"scopes": ["READ"], "label": "ci", "projectIds": [project_id]}))[
        "createApiToken"
    ]
    token = made["token"]
    assert token["label"] == "ci" and token["scopes"] == ["READ"] and token["isActive"]
    assert token["projectIds"] == [project_id]
    assert made["secret"].startswith(token["prefix"])
    # The secret works, for what its scope allows.
    seen = await gql("{ projects { id } }", token=made["secret"])
    assert seen["projects"] == [{"id": project_id}]
    error = await gql.error(
        create, {"scopes": ["READ"], "projectIds": [project_id]}, made["secret"]
    )
    assert error["extensions"]["code"] == "FORBIDDEN"  # a read token creates nothing
    listed = (await gql("{ apiTokens { id label } }"))["apiTokens"]
    assert {"id": token["id"], "label": "ci"} in listed

    wide = await create_api_token(sessions=app_client.runtime.database.sessions, scopes=["admin"])
    everything = (await gql(create, {"scopes": ["ADMIN", "READ"]}, wide.secret))["createApiToken"]
    assert everything["token"]["projectIds"] is None
    assert everything["token"]["scopes"] == ["READ", "ADMIN"]
    created = await gql(
        'mutation { createProject(name: "By token") { dsn } }', token=everything["secret"]
    )
    assert created["createProject"]["dsn"]

    for variables, field, code in [
        ({"scopes": [], "projectIds": [project_id]}, "scopes", "BAD_USER_INPUT"),
        ({"scopes": ["READ"], "projectIds": []}, "projectIds", "BAD_USER_INPUT"),
        ({"scopes": ["READ"], "projectIds": ["999999"]}, "projectIds", "NOT_FOUND"),
        ({"scopes": ["READ"], "projectIds": ["x"]}, "projectIds", "NOT_FOUND"),
        (
            {"scopes": ["READ"], "label": "l" * 201, "projectIds": [project_id]},
            "label",
            "BAD_USER_INPUT",
        ),
    ]:
        error = await gql.error(create, variables, wide.secret)
        assert error["extensions"] == {"code": code, "field": field}, (variables, error)
    long_key = """mutation($projectId: ID!) {
        createProjectKey(projectId: $projectId, scopes: [INGEST], label: "%s") { secret }
    }""" % ("k" * 201)
    error = await gql.error(long_key, {"projectId": project_id})
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "label"}
