"""A page of groups with their project and latest event costs a constant number of SQL
statements, whatever its size: relations go through dataloaders."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from support import GQL, ingest, make_event

QUERY = """query($first: Int) { groups(first: $first) { edges { node {
  id title project { slug } latestEvent { id eventId user { externalId } group { id } }
} } } }"""


async def statements_for(gql: GQL, first: int) -> int:
    engine = gql.client.runtime.database.engine.sync_engine
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        data = await gql(QUERY, {"first": first})
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(data["groups"]["edges"]) == first
    return len([s for s in seen if s.lstrip().upper().startswith("SELECT")])


async def test_constant_queries_for_100_groups(gql: GQL, app_client, app_project):
    await ingest(app_client, app_project, *[make_event(i, user=f"u{i}") for i in range(100)])
    # The alert dispatcher reads what that published (group.created and group.updated per
    # group) with queries of its own: let it finish, so only the page's are counted.
    alerts = app_client.runtime.alerts
    async with asyncio.timeout(10):
        while alerts is not None and alerts.stats.messages < 200:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await statements_for(gql, 1)  # the token's lookup, remembered after the first request
    small = await statements_for(gql, 10)
    large = await statements_for(gql, 100)
    assert large == small
    assert large <= 8
