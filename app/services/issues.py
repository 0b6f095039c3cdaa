"""Issues (groups): listing and reading them, and the status changes people make.

State changes publish `group.updated` (kind STATUS, or DELETED) after they commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import select

from app.errors import InvalidInput, NotFound
from app.models import Event, Group, GroupStatus, utcnow
from app.pubsub import GROUP_UPDATED, PubSub
from app.services.common import Sessions, dialect_of
from app.services.pagination import Page, after_clause, build_page, decode_cursor, page_size
from app.services.search import event_search_clause

GroupSort = Literal["LAST_SEEN_DESC", "FIRST_SEEN_DESC", "COUNT_DESC", "USER_COUNT_DESC"]
SORT_COLUMNS: dict[str, Any] = {
    "LAST_SEEN_DESC": Group.last_seen,
    "FIRST_SEEN_DESC": Group.first_seen,
    "COUNT_DESC": Group.count,
    "USER_COUNT_DESC": Group.user_count,
}
BulkAction = Literal["RESOLVE", "UNRESOLVE", "IGNORE", "DELETE"]
MAX_BULK = 1000


@dataclass(frozen=True)
class GroupFilter:
    """Which groups a list shows. `visible` is what the caller may see (None: all).
    `tags` are (key, value) pairs that one event of the group must all carry."""

    visible: frozenset[int] | None = None
    project_id: int | None = None
    status: str | None = None
    exclude_status: str | None = None
    level: str | None = None
    environment: str | None = None
    release: str | None = None
    search: str | None = None
    tags: tuple[tuple[str, str], ...] = ()


def _group_conditions(sessions: Sessions, where: GroupFilter) -> list[Any]:
    conditions: list[Any] = []
    if where.visible is not None:
        conditions.append(Group.project_id.in_(sorted(where.visible)))  # type: ignore[attr-defined]
    if where.project_id is not None:
        conditions.append(Group.project_id == where.project_id)
    if where.status is not None:
        conditions.append(Group.status == where.status)
    if where.exclude_status is not None:
        conditions.append(Group.status != where.exclude_status)
    if where.level is not None:
        conditions.append(Group.level == where.level)
    event_conditions = []
    if where.environment is not None:
        event_conditions.append(Event.environment == where.environment)
    if where.release is not None:
        event_conditions.append(Event.release == where.release)
    if where.search:
        clause = event_search_clause(dialect_of(sessions), where.search)
        if clause is not None:
            event_conditions.append(clause)
    for key, value in where.tags:
        event_conditions.append(Event.tags[key].as_string() == value)  # type: ignore[index]
    if event_conditions:
        # With a search, the matching events are found through the full-text index and
        # looked up by id; a project condition here would have SQLite walk all of the
        # project's events instead (170 → 28 ms at a million). The group's own project
        # condition above keeps other projects out.
        if where.project_id is not None and not where.search:
            event_conditions.append(Event.project_id == where.project_id)
        matching = select(Event.group_id).where(*event_conditions)
        conditions.append(Group.id.in_(matching))  # type: ignore[union-attr]
    return conditions


async def list_groups(
    *,
    sessions: Sessions,
    where: GroupFilter,
    sort: GroupSort = "LAST_SEEN_DESC",
    first: int | None = None,
    after: str | None = None,
) -> Page[Group]:
    size = page_size(first)
    column = SORT_COLUMNS[sort]
    query = select(Group).where(*_group_conditions(sessions, where))
    if after:
        value, row_id = decode_cursor(after, sort)
        query = query.where(after_clause(column, Group.id, value, row_id))
    query = query.order_by(column.desc(), Group.id.desc()).limit(size + 1)  # type: ignore[union-attr]
    async with sessions() as session:
        rows = (await session.scalars(query)).all()
    name = column.key
    return build_page(rows, size=size, order=sort, key=lambda g: (getattr(g, name), g.id))


MAX_OFFSET_PAGE = 1000


async def list_groups_at_offset(
    *,
    sessions: Sessions,
    where: GroupFilter,
    limit: int,
    offset: int = 0,
    sort: GroupSort = "LAST_SEEN_DESC",
) -> list[Group]:
    """One page by position, for APIs whose clients page with limit and offset (the
    Error Tracker's). Deep offsets cost what they skip; `list_groups` pages by keyset."""
    if not 1 <= limit <= MAX_OFFSET_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_OFFSET_PAGE}", field="limit")
    if offset < 0:
        raise InvalidInput("offset must not be negative", field="offset")
    column = SORT_COLUMNS[sort]
    query = (
        select(Group)
        .where(*_group_conditions(sessions, where))
        .order_by(column.desc(), Group.id.desc())  # type: ignore[union-attr]
        .limit(limit)
        .offset(offset)
    )
    async with sessions() as session:
        return list((await session.scalars(query)).all())


async def count_groups(*, sessions: Sessions, where: GroupFilter) -> int:
    query = select(sa.func.count()).select_from(Group).where(*_group_conditions(sessions, where))
    async with sessions() as session:
        return int(await session.scalar(query) or 0)


async def groups_by_ids(*, sessions: Sessions, ids: Sequence[int]) -> dict[int, Group]:
    if not ids:
        return {}
    async with sessions() as session:
        rows = await session.scalars(select(Group).where(Group.id.in_(list(ids))))  # type: ignore[union-attr]
        return {group.id: group for group in rows if group.id is not None}


async def get_group(*, sessions: Sessions, group_id: int) -> Group:
    async with sessions() as session:
        group = await session.get(Group, group_id)
    if group is None:
        raise NotFound(f"no group {group_id}", field="id")
    return group


async def _publish_status(pubsub: PubSub | None, group: Group) -> None:
    if pubsub is not None:
        await pubsub.publish(
            GROUP_UPDATED, {"group_id": group.id, "project_id": group.project_id, "kind": "STATUS"}
        )


def _clear_ignore(group: Group) -> None:
    group.ignored_at = None
    group.ignore_until = None
    group.ignore_until_count = None
    group.ignore_until_user_count = None
    group.ignore_base_count = None
    group.ignore_base_user_count = None


async def resolve_group(
    *,
    sessions: Sessions,
    group_id: int,
    in_next_release: bool = False,
    pubsub: PubSub | None = None,
    now: datetime | None = None,
) -> Group:
    """Resolve; with `in_next_release`, events of the release seen last do not reopen it."""
    async with sessions.begin() as session:
        group = await session.get(Group, group_id, with_for_update=True)
        if group is None:
            raise NotFound(f"no group {group_id}", field="id")
        group.status = GroupStatus.RESOLVED
        group.resolved_at = now or utcnow()
        group.resolved_in_release = (group.last_release or "") if in_next_release else None
        group.is_regression = False
        _clear_ignore(group)
    await _publish_status(pubsub, group)
    return group


async def unresolve_group(
    *, sessions: Sessions, group_id: int, pubsub: PubSub | None = None
) -> Group:
    async with sessions.begin() as session:
        group = await session.get(Group, group_id, with_for_update=True)
        if group is None:
            raise NotFound(f"no group {group_id}", field="id")
        group.status = GroupStatus.UNRESOLVED
        group.resolved_at = None
        group.resolved_in_release = None
        _clear_ignore(group)
    await _publish_status(pubsub, group)
    return group


async def ignore_group(
    *,
    sessions: Sessions,
    group_id: int,
    until: datetime | None = None,
    until_count: int | None = None,
    until_user_count: int | None = None,
    pubsub: PubSub | None = None,
    now: datetime | None = None,
) -> Group:
    """Ignore, for good or until a time, N more events, or N more affected users."""
    if until_count is not None and until_count < 1:
        raise InvalidInput("untilCount must be at least 1", field="untilCount")
    if until_user_count is not None and until_user_count < 1:
        raise InvalidInput("untilUserCount must be at least 1", field="untilUserCount")
    now = now or utcnow()
    if until is not None and until <= now:
        raise InvalidInput("until must be in the future", field="until")
    async with sessions.begin() as session:
        group = await session.get(Group, group_id, with_for_update=True)
        if group is None:
            raise NotFound(f"no group {group_id}", field="id")
        group.status = GroupStatus.IGNORED
        group.resolved_at = None
        group.resolved_in_release = None
        group.ignored_at = now
        group.ignore_until = until
        group.ignore_until_count = until_count
        group.ignore_until_user_count = until_user_count
        group.ignore_base_count = group.count
        group.ignore_base_user_count = group.user_count
    await _publish_status(pubsub, group)
    return group


async def delete_group(*, sessions: Sessions, group_id: int, pubsub: PubSub | None = None) -> Group:
    """Delete a group with its events; a new event of the same fingerprint starts anew."""
    async with sessions.begin() as session:
        group = await session.get(Group, group_id)
        if group is None:
            raise NotFound(f"no group {group_id}", field="id")
        await session.execute(sa.delete(Event).where(Event.group_id == group_id))  # type: ignore[arg-type]
        await session.delete(group)
    if pubsub is not None:
        await pubsub.publish(
            GROUP_UPDATED, {"group_id": group_id, "project_id": group.project_id, "kind": "DELETED"}
        )
    return group


@dataclass
class BulkOutcome:
    """Which ids were changed, and why the others were not."""

    updated: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


async def bulk_update_groups(
    *,
    sessions: Sessions,
    ids: Sequence[int],
    action: BulkAction,
    visible: frozenset[int] | None,
    pubsub: PubSub | None = None,
) -> BulkOutcome:
    """Apply one action to many groups; ids the caller may not see count as not found."""
    if len(ids) > MAX_BULK:
        raise InvalidInput(f"at most {MAX_BULK} ids at once", field="ids")
    outcome = BulkOutcome()
    found = await groups_by_ids(sessions=sessions, ids=list(dict.fromkeys(ids)))
    for group_id in dict.fromkeys(ids):
        group = found.get(group_id)
        if group is None or (visible is not None and group.project_id not in visible):
            outcome.failed[group_id] = "not found"
            continue
        try:
            if action == "RESOLVE":
                await resolve_group(sessions=sessions, group_id=group_id, pubsub=pubsub)
            elif action == "UNRESOLVE":
                await unresolve_group(sessions=sessions, group_id=group_id, pubsub=pubsub)
            elif action == "IGNORE":
                await ignore_group(sessions=sessions, group_id=group_id, pubsub=pubsub)
            else:
                await delete_group(sessions=sessions, group_id=group_id, pubsub=pubsub)
        except NotFound:
            outcome.failed[group_id] = "not found"
            continue
        outcome.updated.append(group_id)
    return outcome


Interval = Literal["HOUR", "DAY"]
MAX_BUCKETS = 24 * 90


def _bucket_start(moment: datetime, interval: Interval) -> datetime:
    moment = moment.astimezone(UTC)
    if interval == "DAY":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


async def group_histogram(
    *,
    sessions: Sessions,
    group_id: int,
    interval: Interval = "HOUR",
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[tuple[datetime, int]]:
    """Event counts per hour or day from `since` (default: a day or a month before
    `until`) to `until` (default: now), with empty buckets included so a chart needs no
    gap filling."""
    now = until or utcnow()
    step = timedelta(hours=1) if interval == "HOUR" else timedelta(days=1)
    if since is None:
        since = now - (timedelta(hours=24) if interval == "HOUR" else timedelta(days=30))
    start = _bucket_start(since, interval)
    if start > now:
        raise InvalidInput("since must be before until", field="since")
    if (now - start) / step > MAX_BUCKETS:
        raise InvalidInput(f"at most {MAX_BUCKETS} buckets; choose a later since", field="since")
    if dialect_of(sessions) == "postgresql":
        unit = "hour" if interval == "HOUR" else "day"
        bucket: Any = sa.func.date_trunc(unit, sa.func.timezone("UTC", Event.timestamp))
    else:
        pattern = "%Y-%m-%d %H:00:00" if interval == "HOUR" else "%Y-%m-%d 00:00:00"
        bucket = sa.func.strftime(pattern, Event.timestamp)
    query = (
        select(bucket.label("bucket"), sa.func.count())
        .where(Event.group_id == group_id, Event.timestamp >= start, Event.timestamp <= now)
        .group_by("bucket")
    )
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    counts: dict[datetime, int] = {}
    for value, count in rows:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        counts[moment.replace(tzinfo=UTC)] = int(count)
    buckets = []
    cursor = start
    while cursor <= now:
        buckets.append((cursor, counts.get(cursor, 0)))
        cursor += step
    return buckets


TAG_SAMPLE = 10_000


async def group_tags(
    *, sessions: Sessions, group_id: int, top: int = 10
) -> dict[str, list[tuple[str, int]]]:
    """Tag key → its most frequent values with counts, over the group's latest events.

    Events without tags hold JSON `null`, which SQLite's json_each reads as one pair of
    nulls and PostgreSQL's jsonb_each_text refuses outright: only objects are read."""
    if dialect_of(sessions) == "postgresql":
        sql = (
            "SELECT t.key, t.value, count(*) AS n FROM (SELECT tags FROM event "
            "WHERE group_id = :group_id AND jsonb_typeof(tags) = 'object' "
            "ORDER BY id DESC LIMIT :sample) e, "
            "jsonb_each_text(e.tags) t GROUP BY t.key, t.value"
        )
    else:
        sql = (
            "SELECT t.key, t.value, count(*) AS n FROM (SELECT tags FROM event "
            "WHERE group_id = :group_id AND json_type(tags) = 'object' "
            "ORDER BY id DESC LIMIT :sample) e, "
            "json_each(e.tags) t GROUP BY t.key, t.value"
        )
    async with sessions() as session:
        rows = (
            await session.execute(sa.text(sql), {"group_id": group_id, "sample": TAG_SAMPLE})
        ).all()
    tags: dict[str, list[tuple[str, int]]] = {}
    for key, value, count in rows:
        tags.setdefault(str(key), []).append((str(value), int(count)))
    return {
        key: sorted(values, key=lambda item: (-item[1], item[0]))[:top]
        for key, values in sorted(tags.items())
    }


@dataclass(frozen=True)
class Seen:
    """A release or environment of a group: how often and when."""

    name: str
    count: int
    first_seen: datetime
    last_seen: datetime


async def _group_seen(sessions: Sessions, group_id: int, column: Any) -> list[Seen]:
    query = (
        select(column, sa.func.count(), sa.func.min(Event.timestamp), sa.func.max(Event.timestamp))
        .where(Event.group_id == group_id, column.is_not(None))
        .group_by(column)
        .order_by(sa.func.max(Event.timestamp).desc())
    )
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    type_ = Event.__table__.c.timestamp.type
    return [
        Seen(
            name=name,
            count=int(count),
            first_seen=_as_utc(first, type_),
            last_seen=_as_utc(last, type_),
        )
        for name, count, first, last in rows
    ]


def _as_utc(value: Any, type_: Any) -> datetime:
    """Aggregates of a UTC column come back raw on SQLite (text): make them datetimes."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def group_releases(*, sessions: Sessions, group_id: int) -> list[Seen]:
    return await _group_seen(sessions, group_id, Event.release)


async def group_environments(*, sessions: Sessions, group_id: int) -> list[Seen]:
    return await _group_seen(sessions, group_id, Event.environment)
