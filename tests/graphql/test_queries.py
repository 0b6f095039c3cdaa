"""Queries over real HTTP against the ASGI app: lists, paging, sorts, filters, search,
and the detail of a group, an event, a user and an account."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from support import GQL, T0, IngestResult, ingest, make_event

from app.config import Settings


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Every query runs on both databases: search, histograms and tags differ in SQL."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'errorgraph.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    return Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]


GROUPS = """
query($sort: GroupSort, $first: Int, $after: String, $status: GroupStatus, $level: Level,
      $environment: String, $release: String, $search: String, $projectId: ID) {
  groups(sort: $sort, first: $first, after: $after, status: $status, level: $level,
         environment: $environment, release: $release, search: $search, projectId: $projectId) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { cursor node { id title count userCount firstSeen lastSeen } }
  }
}
"""


def titles(data: dict) -> list[str]:
    return [edge["node"]["title"] for edge in data["groups"]["edges"]]


async def test_projects(gql: GQL, app_project):
    data = await gql("{ projects { id slug name createdAt groupingStrategy } }")
    assert data["projects"] == [
        {
            "id": str(app_project.project.id),
            "slug": "app-project",
            "name": "App project",
            "createdAt": app_project.project.created_at.isoformat(),
            "groupingStrategy": "frames",
        }
    ]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("LAST_SEEN_DESC", ["Error2", "Error1", "Error3"]),
        ("FIRST_SEEN_DESC", ["Error2", "Error1", "Error3"]),
        ("COUNT_DESC", ["Error1", "Error2", "Error3"]),
        ("USER_COUNT_DESC", ["Error1", "Error3", "Error2"]),
    ],
)
async def test_every_sort(gql: GQL, populated, sort: str, expected: list[str]):
    data = await gql(GROUPS, {"sort": sort})
    assert [title.split(":")[0] for title in titles(data)] == expected
    assert data["groups"]["totalCount"] == 3


@pytest.mark.parametrize(
    "sort", ["LAST_SEEN_DESC", "FIRST_SEEN_DESC", "COUNT_DESC", "USER_COUNT_DESC"]
)
async def test_paging_walks_every_group_once(gql: GQL, app_client, app_project, sort: str):
    # Ties in the sort value (same counts, same times) must not lose or repeat rows.
    await ingest(
        app_client,
        app_project,
        *[make_event(i, at=T0 + timedelta(minutes=i % 3)) for i in range(7)],
    )
    seen, after, pages = [], None, 0
    while True:
        data = await gql(GROUPS, {"sort": sort, "first": 2, "after": after})
        page = data["groups"]
        seen += [edge["node"]["id"] for edge in page["edges"]]
        pages += 1
        assert page["totalCount"] == 7
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]
    assert pages == 4
    assert len(seen) == len(set(seen)) == 7


async def test_filters(gql: GQL, populated: list[IngestResult], app_client):
    async def names(**variables) -> list[str]:
        return sorted(t.split(":")[0] for t in titles(await gql(GROUPS, variables)))

    assert await names(environment="staging") == ["Error2"]
    assert await names(release="1.0") == ["Error1", "Error3"]
    assert await names(level="WARNING") == ["Error2"]
    assert await names(status="UNRESOLVED") == ["Error1", "Error2", "Error3"]
    assert await names(status="RESOLVED") == []
    assert await names(search="failure number 3") == ["Error3"]
    assert await names(search="checkout2") == ["Error2"]  # structured frames are searched
    assert await names(search="Error1") == ["Error1"]
    assert await names(search="fail") == ["Error1", "Error2", "Error3"]  # prefixes match
    assert await names(search="nothing-like-this") == []
    assert await names(search='"unbalanced ( * quotes') == []


async def test_group_detail(gql: GQL, populated: list[IngestResult]):
    group_id = populated[0].group_id
    data = await gql(
        """
        query($id: ID!) { group(id: $id) {
          id title culprit exceptionType message level status count userCount accountCount
          firstRelease lastRelease isRegression project { slug }
          latestEvent { eventId timestamp user { externalId } account { externalId name } }
          events(first: 2) { totalCount edges { node { timestamp } } pageInfo { hasNextPage } }
          histogram(interval: HOUR, since: "2026-03-01T10:30:00+00:00",
                    until: "2026-03-01T14:00:00+00:00") { start count }
          tags { key values { value count } }
          users { totalCount edges { node { externalId email eventCount } } }
          accounts { totalCount edges { node { externalId name } } }
          releases { name count firstSeen lastSeen }
          environments { name count }
        } }
        """,
        {"id": str(group_id)},
    )
    group = data["group"]
    assert group["title"] == "Error1: failure number 1"
    assert group["culprit"] == "checkout1 (cart.py)"
    assert (group["exceptionType"], group["level"], group["status"]) == (
        "Error1",
        "ERROR",
        "UNRESOLVED",
    )
    assert (group["count"], group["userCount"], group["accountCount"]) == (5, 2, 1)
    assert group["latestEvent"]["timestamp"] == (T0 + timedelta(minutes=4)).isoformat()
    assert group["latestEvent"]["account"] == {"externalId": "acme", "name": "acme Inc"}
    assert group["events"]["totalCount"] == 5
    assert len(group["events"]["edges"]) == 2 and group["events"]["pageInfo"]["hasNextPage"]
    assert group["histogram"] == [
        {"start": "2026-03-01T10:00:00+00:00", "count": 0},
        {"start": "2026-03-01T11:00:00+00:00", "count": 0},
        {"start": "2026-03-01T12:00:00+00:00", "count": 5},
        {"start": "2026-03-01T13:00:00+00:00", "count": 0},
        {"start": "2026-03-01T14:00:00+00:00", "count": 0},
    ]
    assert group["tags"] == [{"key": "browser", "values": [{"value": "Firefox", "count": 5}]}]
    assert group["users"]["totalCount"] == 2
    assert sorted(e["node"]["externalId"] for e in group["users"]["edges"]) == ["a", "b"]
    assert {e["node"]["externalId"]: e["node"]["eventCount"] for e in group["users"]["edges"]} == {
        "a": 2,
        "b": 3,
    }
    assert group["accounts"]["edges"] == [{"node": {"externalId": "acme", "name": "acme Inc"}}]
    assert group["releases"] == [
        {
            "name": "1.0",
            "count": 5,
            "firstSeen": T0.isoformat(),
            "lastSeen": (T0 + timedelta(minutes=4)).isoformat(),
        }
    ]
    assert group["environments"] == [{"name": "production", "count": 5}]


EVENTS = """
query($groupId: ID, $level: Level, $environment: String, $release: String, $userId: ID,
      $accountId: ID, $since: DateTime, $until: DateTime, $search: String, $first: Int,
      $after: String) {
  events(groupId: $groupId, level: $level, environment: $environment, release: $release,
         userId: $userId, accountId: $accountId, since: $since, until: $until, search: $search,
         first: $first, after: $after) {
    totalCount pageInfo { hasNextPage endCursor }
    edges { node { id eventId timestamp level environment } }
  }
}
"""


async def test_events_filters_and_paging(gql: GQL, populated: list[IngestResult]):
    async def count(**variables) -> int:
        return (await gql(EVENTS, variables))["events"]["totalCount"]

    assert await count() == 8
    assert await count(groupId=str(populated[0].group_id)) == 5
    assert await count(level="WARNING") == 2
    assert await count(environment="staging") == 2
    assert await count(release="2.0") == 2
    assert await count(since=T0.isoformat()) == 7
    assert await count(until=T0.isoformat()) == 1
    assert await count(search="number 2") == 2

    users = await gql(
        "query($p: ID!) { users(projectId: $p) { edges { node { id externalId } } } }",
        {"p": str(populated[0].project_id)},
    )
    ids = {e["node"]["externalId"]: e["node"]["id"] for e in users["users"]["edges"]}
    assert await count(userId=ids["a"]) == 2
    accounts = await gql(
        "query($p: ID!) { accounts(projectId: $p) { edges { node { id } } } }",
        {"p": str(populated[0].project_id)},
    )
    assert await count(accountId=accounts["accounts"]["edges"][0]["node"]["id"]) == 5

    seen, after = [], None
    while True:
        page = (await gql(EVENTS, {"first": 3, "after": after}))["events"]
        seen += [edge["node"]["timestamp"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == sorted(seen, reverse=True) and len(seen) == 8


async def test_event_by_our_id_and_client_id(gql: GQL, populated: list[IngestResult]):
    query = """query($id: ID!) { event(id: $id) { id eventId group { id } project { slug }
      exception { type value frames { filename function lineno inApp contextLine } }
      breadcrumbs tags source user { externalId } userData } }"""
    by_ours = (await gql(query, {"id": str(populated[0].id)}))["event"]
    by_client = (await gql(query, {"id": populated[0].event_id}))["event"]
    assert by_ours == by_client
    assert by_ours["group"]["id"] == str(populated[0].group_id)
    assert by_ours["exception"][0]["frames"][0] == {
        "filename": "shop/cart.py",
        "function": "checkout1",
        "lineno": 10,
        "inApp": True,
        "contextLine": "total = price / qty",
    }
    assert by_ours["breadcrumbs"] == [{"category": "click", "message": "button#pay"}]
    assert by_ours["tags"] == {"browser": "Firefox"}
    assert by_ours["source"] == "api"
    assert by_ours["userData"]["email"] == "b@example.com"
    assert (await gql(query, {"id": "no-such-event"}))["event"] is None


async def test_users_and_accounts(gql: GQL, populated: list[IngestResult]):
    project_id = str(populated[0].project_id)
    data = await gql(
        """query($p: ID!) {
          users(projectId: $p) { totalCount edges { node { id externalId email eventCount
            groups { totalCount edges { node { title } } } events(first: 1) { totalCount } } } }
          found: users(projectId: $p, search: "c@ex") { edges { node { externalId } } }
          accounts(projectId: $p) { totalCount edges { node { id externalId name eventCount
            groups { edges { node { title } } } } } }
        }""",
        {"p": project_id},
    )
    users = {e["node"]["externalId"]: e["node"] for e in data["users"]["edges"]}
    assert data["users"]["totalCount"] == 3
    assert users["a"]["eventCount"] == 2 and users["a"]["events"]["totalCount"] == 2
    assert users["c"]["groups"]["edges"] == [{"node": {"title": "Error3: failure number 3"}}]
    assert data["found"]["edges"] == [{"node": {"externalId": "c"}}]
    account = data["accounts"]["edges"][0]["node"]
    assert (account["externalId"], account["eventCount"]) == ("acme", 5)
    single = await gql(
        "query($id: ID!) { user(id: $id) { externalId } account(id: $id) { name } }",
        {"id": users["a"]["id"]},
    )
    assert single["user"] == {"externalId": "a"}


async def test_retention_default(gql: GQL, app_project):
    data = await gql(
        "query($p: ID) { retention(projectId: $p) { days isDefault autoExportBeforeCleanup } }",
        {"p": str(app_project.project.id)},
    )
    assert data["retention"] == {"days": 90, "isDefault": True, "autoExportBeforeCleanup": False}
