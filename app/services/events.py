"""Reading events: filtered, searched, paged newest first; and by id for dataloaders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select

from app.errors import NotFound
from app.models import Event, Group
from app.services.common import MAX_INT_COLUMN, Sessions, dialect_of
from app.services.pagination import Page, after_clause, build_page, decode_cursor, page_size
from app.services.search import event_search_clause, few_search_matches

ORDER = "EVENTS_NEWEST"


@dataclass(frozen=True)
class EventFilter:
    """Which events a list shows. `visible` is what the caller may see (None: all).
    `tags` are (key, value) pairs that the event must all carry."""

    visible: frozenset[int] | None = None
    project_id: int | None = None
    group_id: int | None = None
    level: str | None = None
    environment: str | None = None
    release: str | None = None
    user_id: int | None = None
    account_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    search: str | None = None
    tags: tuple[tuple[str, str], ...] = ()


def event_conditions(
    sessions: Sessions, where: EventFilter, *, matched_ids: list[int] | None = None
) -> list[Any]:
    """The WHERE conditions of `where`. With `matched_ids` (the few events a search
    matches, see `list_events`), the search is those ids and the project checks are
    written so that SQLite looks the ids up rather than walking the project's index."""
    conditions: list[Any] = []
    project = Event.project_id if matched_ids is None else Event.project_id + 0
    if where.group_id is not None:
        # The project is checked on the group's row, not on event.project_id: a condition
        # on that column lets SQLite (which keeps no statistics unless ANALYZE ran) walk
        # the project's whole time index for a group's few events, seconds at 1M events.
        project_checks = []
        if where.visible is not None:
            project_checks.append(Group.project_id.in_(sorted(where.visible)))  # type: ignore[attr-defined]
        if where.project_id is not None:
            project_checks.append(Group.project_id == where.project_id)
        if project_checks:
            conditions.append(
                sa.exists().where(Group.id == where.group_id, *project_checks).correlate(None)
            )
    else:
        if where.visible is not None:
            conditions.append(project.in_(sorted(where.visible)))  # type: ignore[attr-defined]
        if where.project_id is not None:
            conditions.append(project == where.project_id)
    pairs = [
        (where.group_id, Event.group_id),
        (where.level, Event.level),
        (where.environment, Event.environment),
        (where.release, Event.release),
        (where.user_id, Event.affected_user_id),
        (where.account_id, Event.account_id),
    ]
    conditions.extend(column == value for value, column in pairs if value is not None)
    if where.since is not None:
        conditions.append(Event.timestamp >= where.since)
    if where.until is not None:
        conditions.append(Event.timestamp < where.until)
    if matched_ids is not None:
        conditions.append(Event.id.in_(matched_ids))  # type: ignore[union-attr]
    elif where.search:
        clause = event_search_clause(dialect_of(sessions), where.search)
        if clause is not None:
            conditions.append(clause)
    for key, value in where.tags:
        conditions.append(Event.tags[key].as_string() == value)  # type: ignore[index]
    return conditions


async def list_events(
    *,
    sessions: Sessions,
    where: EventFilter,
    first: int | None = None,
    after: str | None = None,
) -> Page[Event]:
    size = page_size(first)
    if after:
        value, row_id = decode_cursor(after, ORDER)
    async with sessions() as session:
        # One session for the probe (a search only) and the page.
        matched_ids = (
            await few_search_matches(session, dialect_of(sessions), where.search)
            if where.search
            else None
        )
        query = select(Event).where(*event_conditions(sessions, where, matched_ids=matched_ids))
        if after:
            query = query.where(after_clause(Event.timestamp, Event.id, value, row_id))
        query = query.order_by(Event.timestamp.desc(), Event.id.desc()).limit(size + 1)  # type: ignore[attr-defined, union-attr]
        rows = (await session.scalars(query)).all()
    return build_page(rows, size=size, order=ORDER, key=lambda e: (e.timestamp, e.id))


async def count_events(*, sessions: Sessions, where: EventFilter) -> int:
    query = select(sa.func.count()).select_from(Event).where(*event_conditions(sessions, where))
    async with sessions() as session:
        return int(await session.scalar(query) or 0)


async def events_by_ids(*, sessions: Sessions, ids: Sequence[int]) -> dict[int, Event]:
    if not ids:
        return {}
    async with sessions() as session:
        rows = await session.scalars(select(Event).where(Event.id.in_(list(ids))))  # type: ignore[union-attr]
        return {event.id: event for event in rows if event.id is not None}


async def latest_events_by_group(
    *, sessions: Sessions, group_ids: Sequence[int]
) -> dict[int, Event]:
    """The most recently received event of each group, in one query."""
    if not group_ids:
        return {}
    newest = (
        select(sa.func.max(Event.id))
        .where(Event.group_id.in_(list(group_ids)))  # type: ignore[attr-defined]
        .group_by(Event.group_id)
    )
    async with sessions() as session:
        rows = await session.scalars(select(Event).where(Event.id.in_(newest)))  # type: ignore[union-attr]
        return {event.group_id: event for event in rows}


async def event_by_ref(*, sessions: Sessions, ref: str, visible: frozenset[int] | None) -> Event:
    """An event by our id or by the client's event_id (hex with or without dashes)."""
    ref = ref.strip()
    conditions: list[Any] = []
    if visible is not None:
        conditions.append(Event.project_id.in_(sorted(visible)))  # type: ignore[attr-defined]
    candidates = [ref]
    if "-" in ref:
        candidates.append(ref.replace("-", ""))
    clauses = [Event.event_id.in_(candidates)]  # type: ignore[attr-defined]
    if ref.isascii() and ref.isdigit() and len(ref) <= 10 and int(ref) <= MAX_INT_COLUMN:
        clauses.append(Event.id == int(ref))
    query = select(Event).where(sa.or_(*clauses), *conditions).order_by(Event.id).limit(2)
    async with sessions() as session:
        rows = (await session.scalars(query)).all()
    if not rows:
        raise NotFound(f"no event {ref!r}", field="id")
    # Our id wins over a client event_id that happens to be the same digits.
    for row in rows:
        if str(row.id) == ref:
            return row
    return rows[0]
