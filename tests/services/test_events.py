"""Listing a group's events: only what the caller may see, through the group's own index."""

from __future__ import annotations

import sqlalchemy as sa

from app.domain.event import EventIn, ExceptionIn, Frame
from app.models import Event
from app.services.events import EventFilter, count_events, event_conditions, list_events
from app.services.ingest import ingest_events
from app.services.keys import CreatedProject, create_project
from app.services.runtime import Runtime


def event(signature: int) -> EventIn:
    frames = [Frame(filename="app.py", module="shop.app", function=f"view{signature}")]
    return EventIn(exceptions=[ExceptionIn(type="KeyError", value="sku", frames=frames)])


async def test_a_groups_events_are_listed_only_for_a_project_the_caller_sees(
    runtime: Runtime, project: CreatedProject
):
    other = await create_project(sessions=runtime.database.sessions, name="Other")
    mine = await ingest_events(
        writer=runtime.writer, project=project.project, events=[event(1), event(1), event(2)]
    )
    await ingest_events(writer=runtime.writer, project=other.project, events=[event(1)])
    group_id = mine[0].group_id
    assert project.project.id is not None and other.project.id is not None
    sessions = runtime.database.sessions

    async def listed(**where: object) -> list[int]:
        page = await list_events(sessions=sessions, where=EventFilter(group_id=group_id, **where))  # type: ignore[arg-type]
        return sorted(e.id for e in page.items if e.id is not None)

    expected = sorted(result.id for result in mine[:2])
    assert await listed() == expected
    assert await listed(visible=frozenset({project.project.id})) == expected
    assert await listed(project_id=project.project.id) == expected
    assert await listed(visible=frozenset({other.project.id})) == []
    assert await listed(project_id=other.project.id) == []
    assert await listed(visible=frozenset()) == []
    where = EventFilter(group_id=group_id, visible=frozenset({other.project.id}))
    assert await count_events(sessions=sessions, where=where) == 0


async def test_a_groups_events_are_read_through_the_group_index(
    runtime: Runtime, project: CreatedProject
):
    """Without statistics SQLite chose the project's time index for `project_id IN (…)
    AND group_id = ?`, reading every event of the project for a group's few."""
    sessions = runtime.database.sessions
    where = EventFilter(group_id=7, project_id=1, visible=frozenset({1, 2}))
    query = (
        sa.select(Event)
        .where(*event_conditions(sessions, where))
        .order_by(Event.timestamp.desc(), Event.id.desc())  # type: ignore[attr-defined, union-attr]
        .limit(21)
    )
    sql = str(
        query.compile(
            dialect=runtime.database.engine.dialect, compile_kwargs={"literal_binds": True}
        )
    )
    async with sessions() as session:
        plan = " ".join(
            str(row[-1]) for row in await session.execute(sa.text("EXPLAIN QUERY PLAN " + sql))
        )

    assert "ix_event_group_timestamp" in plan
    assert "ix_event_project_timestamp" not in plan


async def plan_of(runtime: Runtime, query: sa.Select) -> str:  # type: ignore[type-arg]
    sql = str(
        query.compile(
            dialect=runtime.database.engine.dialect, compile_kwargs={"literal_binds": True}
        )
    )
    async with runtime.database.sessions() as session:
        return " ".join(
            str(row[-1]) for row in await session.execute(sa.text("EXPLAIN QUERY PLAN " + sql))
        )


async def test_a_search_with_few_matches_looks_them_up(
    runtime: Runtime, project: CreatedProject, monkeypatch
):
    """Few matches are read by id; many walk the time index. Both list the same events."""
    from app.services import search

    other = await create_project(sessions=runtime.database.sessions, name="Other")
    for n in range(6):
        await ingest_events(writer=runtime.writer, project=project.project, events=[event(n % 3)])
    await ingest_events(writer=runtime.writer, project=other.project, events=[event(1)])
    sessions = runtime.database.sessions
    where = EventFilter(project_id=project.project.id, search="KeyError view1")

    async def listed(size: int) -> list[tuple[str, int | None]]:
        page = await list_events(sessions=sessions, where=where, first=size)
        rest = await list_events(sessions=sessions, where=where, first=50, after=page.end_cursor)
        return [(e.message or e.exception_type or "", e.id) for e in [*page.items, *rest.items]]

    few = await listed(1)
    assert len(few) == 2 and all(event_id is not None for _, event_id in few)
    monkeypatch.setattr(search, "FEW_MATCHES", 1)
    assert await listed(1) == few

    query = sa.select(Event.id).where(*event_conditions(sessions, where, matched_ids=[1, 2]))
    ordered = query.order_by(Event.timestamp.desc()).limit(51)  # type: ignore[attr-defined]
    assert "ix_event_project_timestamp" not in await plan_of(runtime, ordered)
    assert "ix_event_project_timestamp" in await plan_of(
        runtime,
        sa.select(Event.id)
        .where(*event_conditions(sessions, where))
        .order_by(
            Event.timestamp.desc()  # type: ignore[attr-defined]
        )
        .limit(51),
    )
