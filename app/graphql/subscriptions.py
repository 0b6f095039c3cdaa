"""The Subscription root: new issues, new events and issue changes, live.

Fed only by what was committed (services publish ids after commit). Each message is read
fresh in its own short session, and the dataloaders are rebuilt for every message, so
nothing read for one message is served stale for the next. A viewer limited to some
projects never gets a message of another project: the check is on the message, before
anything is read.

A subscriber that fell behind (its queue drops the oldest messages) or that reconnects
catches up with a query: `groups(sort: LAST_SEEN_DESC)` or `events(since: …)` from the
time of the last message it saw.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from enum import Enum
from typing import Any

import strawberry

from app.pubsub import EVENT_CAPTURED, GROUP_CREATED, GROUP_UPDATED
from app.services import events as event_service
from app.services import issues as issue_service

from .context import Info, Loaders
from .queries import parse_id, readable_project
from .types import EventType, GroupType, LevelEnum


@strawberry.enum(name="GroupChangeKind")
class GroupChangeKindEnum(Enum):
    NEW_EVENT = "NEW_EVENT"
    STATUS = "STATUS"
    REGRESSION = "REGRESSION"
    DELETED = "DELETED"
    MERGED = "MERGED"


@strawberry.type(name="GroupChange")
class GroupChangeType:
    kind: GroupChangeKindEnum
    group: GroupType | None = strawberry.field(description="None when the group was deleted.")
    group_id: strawberry.ID


async def _messages(
    info: Info, channel: str, accept: Callable[[dict[str, Any]], bool]
) -> AsyncGenerator[dict[str, Any], None]:
    """Messages of `channel` the viewer may see and `accept` keeps, with fresh loaders."""
    viewer = await info.context.viewer()
    async with info.context.runtime.pubsub.subscribe(channel) as subscription:
        while True:
            _, message = await subscription.get()
            if not viewer.can_see(int(message["project_id"])) or not accept(message):
                continue
            info.context.loaders = Loaders.build(info.context.sessions)
            yield message


def _matches(message: dict[str, Any], key: str, wanted: int | None) -> bool:
    return wanted is None or int(message[key]) == wanted


@strawberry.type
class Subscription:
    @strawberry.subscription(description="Each new issue, once its first event is committed.")
    async def group_created(
        self,
        info: Info,
        project_id: strawberry.ID | None = None,
        environment: str | None = None,
        level: LevelEnum | None = None,
    ) -> AsyncGenerator[GroupType, None]:
        project = await readable_project(info, project_id)
        sessions = info.context.sessions
        async for message in _messages(
            info, GROUP_CREATED, lambda m: _matches(m, "project_id", project)
        ):
            group_id = int(message["group_id"])
            group = (await issue_service.groups_by_ids(sessions=sessions, ids=[group_id])).get(
                group_id
            )
            if group is None or (level is not None and group.level != level.value):
                continue
            if environment is not None:
                first = await event_service.latest_events_by_group(
                    sessions=sessions, group_ids=[group_id]
                )
                if group_id not in first or first[group_id].environment != environment:
                    continue
            yield GroupType.from_row(group)

    @strawberry.subscription(description="Each new event, once committed.")
    async def event_captured(
        self,
        info: Info,
        project_id: strawberry.ID | None = None,
        group_id: strawberry.ID | None = None,
        level: LevelEnum | None = None,
    ) -> AsyncGenerator[EventType, None]:
        project = await readable_project(info, project_id)
        group = parse_id(group_id, "groupId")
        sessions = info.context.sessions
        async for message in _messages(
            info,
            EVENT_CAPTURED,
            lambda m: _matches(m, "project_id", project) and _matches(m, "group_id", group),
        ):
            event_id = int(message["event_id"])
            found = await event_service.events_by_ids(sessions=sessions, ids=[event_id])
            event = found.get(event_id)
            if event is None or (level is not None and event.level != level.value):
                continue
            yield EventType.from_row(event)

    @strawberry.subscription(
        description="Changes to issues: new events (counts), status, regressions, deletion."
    )
    async def group_updated(
        self,
        info: Info,
        project_id: strawberry.ID | None = None,
        group_id: strawberry.ID | None = None,
    ) -> AsyncGenerator[GroupChangeType, None]:
        project = await readable_project(info, project_id)
        group = parse_id(group_id, "groupId")
        sessions = info.context.sessions
        async for message in _messages(
            info,
            GROUP_UPDATED,
            lambda m: _matches(m, "project_id", project) and _matches(m, "group_id", group),
        ):
            changed_id = int(message["group_id"])
            row = (await issue_service.groups_by_ids(sessions=sessions, ids=[changed_id])).get(
                changed_id
            )
            yield GroupChangeType(
                kind=GroupChangeKindEnum(message.get("kind", "NEW_EVENT")),
                group=GroupType.from_row(row) if row else None,
                group_id=strawberry.ID(str(changed_id)),
            )
