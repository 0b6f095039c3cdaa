"""Retention cleanup runs over GraphQL: `retentionRuns` and `RetentionPolicy.lastRun`,
a failed export visible with its reason."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from support import GQL, AppClient, ingest, make_event

from app.models import utcnow
from app.services.cleanup import run_cleanup
from app.services.keys import CreatedProject, create_project

POLICY = """
query ($p: ID) {
  retention(projectId: $p) {
    days
    lastRun { status eventsDeleted groupsDeleted exportedTo error projectId finishedAt }
  }
}
"""

RUNS = """
query ($p: ID, $first: Int, $after: String) {
  retentionRuns(projectId: $p, first: $first, after: $after) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { node { id projectId status eventsDeleted exportedTo error } }
  }
}
"""

SET = """
mutation ($p: ID!, $dest: String!) {
  setRetention(projectId: $p, days: 30, autoExportBeforeCleanup: true, exportDestination: $dest) {
    days
  }
}
"""


async def test_runs_and_last_run(
    gql: GQL, app_client: AppClient, app_project: CreatedProject, tmp_path: Path
):
    project_id = str(app_project.project.id)
    assert (await gql(POLICY, {"p": project_id}))["retention"]["lastRun"] is None
    await ingest(app_client, app_project, make_event(1), make_event(2))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    await gql(SET, {"p": project_id, "dest": blocker.as_uri()})
    later = utcnow() + timedelta(days=31)

    async def cleanup() -> None:
        await run_cleanup(
            database=app_client.runtime.database,
            settings=app_client.runtime.settings,
            clock=lambda: later,
        )

    await cleanup()
    last = (await gql(POLICY, {"p": project_id}))["retention"]["lastRun"]
    assert last["status"] == "FAILED"
    assert "cannot write to" in last["error"]
    assert (last["eventsDeleted"], last["exportedTo"], last["projectId"]) == (0, None, project_id)

    archive = tmp_path / "archive"
    await gql(SET, {"p": project_id, "dest": archive.as_uri()})
    await cleanup()
    last = (await gql(POLICY, {"p": project_id}))["retention"]["lastRun"]
    assert (last["status"], last["eventsDeleted"], last["groupsDeleted"]) == ("OK", 2, 2)
    assert last["exportedTo"].startswith(archive.as_uri() + "/errorgraph-")
    assert last["finishedAt"] is not None

    first = (await gql(RUNS, {"p": project_id, "first": 1}))["retentionRuns"]
    assert first["totalCount"] == 2
    assert [e["node"]["status"] for e in first["edges"]] == ["OK"]
    assert first["pageInfo"]["hasNextPage"]
    rest = (
        await gql(RUNS, {"p": project_id, "first": 5, "after": first["pageInfo"]["endCursor"]})
    )["retentionRuns"]
    assert [e["node"]["status"] for e in rest["edges"]] == ["FAILED"]
    assert not rest["pageInfo"]["hasNextPage"]


async def test_a_token_sees_only_its_projects_runs(
    gql: GQL, app_client: AppClient, app_project: CreatedProject
):
    other = await create_project(sessions=app_client.runtime.database.sessions, name="Other")
    await run_cleanup(database=app_client.runtime.database, settings=app_client.runtime.settings)

    mine = (await gql(RUNS))["retentionRuns"]
    assert [e["node"]["projectId"] for e in mine["edges"]] == [str(app_project.project.id)]
    assert mine["totalCount"] == 1
    theirs = await gql.error(RUNS, {"p": str(other.project.id)})
    assert theirs["extensions"]["code"] == "FORBIDDEN"
    everything = (await gql(RUNS, token=other.token.secret))["retentionRuns"]
    assert [e["node"]["projectId"] for e in everything["edges"]] == [str(other.project.id)]
