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

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from enum import Enum
from functools import partial
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
    """Messages of `channel` the viewer may see and `accept` keeps, with fresh loaders;
    each carries `_delivery`, the number that keys the reads its subscribers share."""
    viewer = await info.context.viewer()
    async with info.context.runtime.pubsub.subscribe(channel) as subscription:
        while True:
            delivery = await subscription.get_delivery()
            message = delivery.message
            if not viewer.can_see(int(message["project_id"])) or not accept(message):
                continue
            info.context.loaders = Loaders.build(info.context.sessions)
            yield {**message, "_delivery": delivery.number}


class SharedReads:
    """Subscribers of one delivered message share one read of what it names.

    Every subscriber would otherwise read the same row in its own query: a new event with
    a thousand subscribers would cost a thousand queries. The key carries the delivery's
    sequence number, so a later message about the same group always reads it afresh;
    entries expire after `ttl` seconds (subscribers that fall further behind read again).
    """

    def __init__(self, ttl: float = 5.0, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[tuple[Any, ...], tuple[float, asyncio.Future[Any]]] = {}

    async def get(self, key: tuple[Any, ...], load: Callable[[], Awaitable[Any]]) -> Any:
        loop = asyncio.get_running_loop()
        now = loop.time()
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now or (entry[1].done() and entry[1].exception()):
            if len(self._entries) >= self.size:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            entry = (now + self.ttl, asyncio.ensure_future(load()))
            self._entries[key] = entry
        if entry[1].done():
            # Every subscriber after the first finds the read done: no shield to build.
            return entry[1].result()
        return await asyncio.shield(entry[1])


shared_reads = SharedReads()


def _matches(message: dict[str, Any], key: str, wanted: int | None) -> bool:
    return wanted is None or int(message[key]) == wanted


async def _group(sessions: Any, group_id: int, message: dict[str, Any]) -> Any:
    found = await shared_reads.get(
        (id(sessions), "group", group_id, message.get("_delivery")),
        partial(issue_service.groups_by_ids, sessions=sessions, ids=[group_id]),
    )
    return found.get(group_id)


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
            group = await _group(sessions, group_id, message)
            if group is None or (level is not None and group.level != level.value):
                continue
            if environment is not None:
                first = await shared_reads.get(
                    (id(sessions), "latest", group_id, message.get("_delivery")),
                    partial(
                        event_service.latest_events_by_group,
                        sessions=sessions,
                        group_ids=[group_id],
                    ),
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
            found = await shared_reads.get(
                (id(sessions), "event", event_id, message.get("_delivery")),
                partial(event_service.events_by_ids, sessions=sessions, ids=[event_id]),
            )
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
            row = await _group(sessions, changed_id, message)
            yield GroupChangeType(
                kind=GroupChangeKindEnum(message.get("kind", "NEW_EVENT")),
                group=GroupType.from_row(row) if row else None,
                group_id=strawberry.ID(str(changed_id)),
            )
