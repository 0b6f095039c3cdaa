"""The bulk path: what it stores is what one-by-one ingest stores, only batched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.domain.event import EventIn, ExceptionIn, Frame, UserIn
from app.models import AffectedUser, Event, Group, GroupStatus
from app.services.bulk import bulk_ingest
from app.services.events import EventFilter, count_events
from app.services.ingest import ingest_events
from app.services.issues import resolve_group
from app.services.keys import CreatedProject, create_project
from app.services.runtime import Runtime

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_events(count: int, *, signatures: int = 7, users: int = 5) -> list[EventIn]:
    """`count` events over `signatures` stacks and `users` users, one minute apart; each
    event id is derived from its number so that two lists of the same events agree."""
    events = []
    for n in range(count):
        signature = n % signatures
        frames = [
            Frame(filename="app.py", module="shop.app", function=f"view{signature}", lineno=3),
            Frame(filename="pay.py", module="shop.pay", function=f"charge{signature}", lineno=9),
        ]
        events.append(
            EventIn(
                event_id=f"{n:032x}",
                timestamp=T0 + timedelta(minutes=n),
                exceptions=[ExceptionIn(type="PaymentDeclined", value=f"order {n}", frames=frames)],
                user=UserIn(id=f"u{n % users}"),
                release=f"1.{n % 3}",
            )
        )
    return events


async def other_project(runtime: Runtime, name: str = "Other") -> CreatedProject:
    return await create_project(sessions=runtime.database.sessions, name=name)


async def group_summary(runtime: Runtime, project_id: int) -> list[tuple[object, ...]]:
    async with runtime.database.sessions() as session:
        rows = await session.execute(
            select(
                Group.fingerprint,
                Group.title,
                Group.count,
                Group.user_count,
                Group.first_seen,
                Group.last_seen,
                Group.first_release,
                Group.last_release,
                Group.status,
            )
            .where(Group.project_id == project_id)
            .order_by(Group.fingerprint)
        )
        return [tuple(row) for row in rows]


async def scalar(runtime: Runtime, query: object) -> int:
    async with runtime.database.sessions() as session:
        return int((await session.execute(query)).scalar_one())  # type: ignore[call-overload]


async def test_bulk_load_stores_what_one_by_one_ingest_stores(
    runtime: Runtime, project: CreatedProject
):
    one_by_one = await other_project(runtime)
    for event in make_events(60):
        await ingest_events(writer=runtime.writer, project=one_by_one.project, events=[event])

    result = await bulk_ingest(
        database=runtime.database, project=project.project, events=make_events(60), batch_size=8
    )

    assert result.stored == 60
    assert result.duplicates == 0
    assert len(result.groups_created) == 7
    assert project.project.id is not None and one_by_one.project.id is not None
    bulk_groups = await group_summary(runtime, project.project.id)
    assert bulk_groups == await group_summary(runtime, one_by_one.project.id)
    assert sum(int(g[2]) for g in bulk_groups) == 60  # type: ignore[call-overload]
    for project_id in (project.project.id, one_by_one.project.id):
        users = select(func.count()).select_from(AffectedUser)
        assert await scalar(runtime, users.where(AffectedUser.project_id == project_id)) == 5


async def test_repeated_event_ids_are_stored_once(runtime: Runtime, project: CreatedProject):
    events = make_events(20)
    await ingest_events(writer=runtime.writer, project=project.project, events=events[:5])

    # Already stored (0-4), repeated within one batch (5-9 twice), and across batches.
    result = await bulk_ingest(
        database=runtime.database,
        project=project.project,
        events=events[:10] + events[5:10] + events[10:] + events[15:],
        batch_size=6,
    )

    assert result.stored == 15
    assert result.duplicates == 5 + 5 + 5
    assert project.project.id is not None
    stored = select(func.count()).select_from(Event).where(Event.project_id == project.project.id)
    assert await scalar(runtime, stored) == 20
    total = select(func.sum(Group.count)).where(Group.project_id == project.project.id)
    assert await scalar(runtime, total) == 20


async def test_events_may_come_from_an_async_iterable(runtime: Runtime, project: CreatedProject):
    async def produce() -> AsyncIterator[EventIn]:
        for event in make_events(25, signatures=1):
            yield event

    result = await bulk_ingest(
        database=runtime.database, project=project.project, events=produce(), batch_size=10
    )

    assert (result.stored, result.duplicates, len(result.groups_created)) == (25, 0, 1)


async def test_bulk_loaded_events_are_searchable_and_reopen_resolved_groups(
    runtime: Runtime, project: CreatedProject
):
    [first] = await ingest_events(
        writer=runtime.writer, project=project.project, events=make_events(1, signatures=1)
    )
    await resolve_group(sessions=runtime.database.sessions, group_id=first.group_id)

    await bulk_ingest(
        database=runtime.database,
        project=project.project,
        events=make_events(30, signatures=1)[1:],
        batch_size=10,
    )

    where = EventFilter(project_id=project.project.id, search="PaymentDeclined order")
    assert await count_events(sessions=runtime.database.sessions, where=where) == 30
    async with runtime.database.sessions() as session:
        group = await session.get(Group, first.group_id)
    assert group is not None
    assert group.status == GroupStatus.UNRESOLVED
    assert group.is_regression is True


async def test_a_batch_size_below_one_is_refused(runtime: Runtime, project: CreatedProject):
    with pytest.raises(ValueError, match="batch_size"):
        await bulk_ingest(
            database=runtime.database, project=project.project, events=[], batch_size=0
        )
