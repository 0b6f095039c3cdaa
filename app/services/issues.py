"""Issues (groups): reading one, and the status changes people make.

State changes publish `group.updated` with kind STATUS after they commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import InvalidInput, NotFound
from app.models import Group, GroupStatus, utcnow
from app.pubsub import GROUP_UPDATED, PubSub

Sessions = async_sessionmaker[AsyncSession]


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
