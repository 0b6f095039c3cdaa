"""The Query root. Every resolver asks the context who is calling and lets services
narrow what they read to the projects the caller may see."""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.errors import Forbidden, NotFound
from app.services import client_reports as client_report_service
from app.services import events as event_service
from app.services import issues as issue_service
from app.services import keys as key_service
from app.services import logs as log_service
from app.services import people as people_service
from app.services import retention as retention_service
from app.services.common import MAX_INT_COLUMN
from app.services.events import EventFilter
from app.services.issues import GroupFilter

from .context import Info
from .types import (
    AccountType,
    AffectedUserType,
    ApiTokenType,
    ClientReportTotalType,
    Connection,
    EventType,
    GroupSortEnum,
    GroupStatusEnum,
    GroupType,
    LevelEnum,
    LogMessageType,
    ProjectKeyType,
    ProjectType,
    RetentionRunType,
    RetentionType,
    connection,
    events_connection,
)


def parse_id(value: strawberry.ID | str | None, field: str) -> int | None:
    """Our ids are integers; anything else cannot name a row."""
    if value is None:
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_INT_COLUMN:
        raise NotFound(f"no such {field}: {value!r}", field=field)
    return int(text)


def required_id(value: strawberry.ID | str, field: str) -> int:
    parsed = parse_id(value, field)
    assert parsed is not None
    return parsed


async def readable_project(info: Info, project_id: strawberry.ID | None) -> int | None:
    """The project id argument, checked against the caller's projects."""
    parsed = parse_id(project_id, "projectId")
    await info.context.require("read", parsed)
    if parsed is not None and await info.context.loaders.project.load(parsed) is None:
        raise NotFound(f"no project {parsed}", field="projectId")
    return parsed


@strawberry.type
class Query:
    @strawberry.field(description="The projects the caller may see.")
    async def projects(self, info: Info) -> list[ProjectType]:
        viewer = await info.context.require("read")
        rows = await key_service.list_projects(
            sessions=info.context.sessions, project_ids=viewer.project_ids
        )
        return [ProjectType.from_row(row) for row in rows]

    @strawberry.field
    async def project(self, info: Info, id: strawberry.ID) -> ProjectType | None:
        project_id = required_id(id, "id")
        await info.context.require("read", project_id)
        row = await info.context.loaders.project.load(project_id)
        return ProjectType.from_row(row) if row else None

    @strawberry.field(description="A project's keys (prefixes only; needs the admin scope).")
    async def project_keys(self, info: Info, project_id: strawberry.ID) -> list[ProjectKeyType]:
        parsed = required_id(project_id, "projectId")
        await info.context.require("admin", parsed)
        rows = await key_service.list_project_keys(
            sessions=info.context.sessions, project_id=parsed
        )
        return [ProjectKeyType.from_row(row) for row in rows]

    @strawberry.field(
        description="API tokens (prefixes only; needs the admin scope): those whose "
        "projects are all the caller's."
    )
    async def api_tokens(self, info: Info) -> list[ApiTokenType]:
        viewer = await info.context.require("admin")
        rows = await key_service.list_api_tokens(sessions=info.context.sessions)
        return [ApiTokenType.from_row(row) for row in rows if viewer.can_see_all(row.project_ids)]

    @strawberry.field(description="Issues, filtered and sorted; `search` is full-text.")
    async def groups(
        self,
        info: Info,
        project_id: strawberry.ID | None = None,
        status: GroupStatusEnum | None = None,
        level: LevelEnum | None = None,
        environment: str | None = None,
        release: str | None = None,
        search: str | None = None,
        sort: GroupSortEnum = GroupSortEnum.LAST_SEEN_DESC,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[GroupType]:
        parsed = await readable_project(info, project_id)
        viewer = await info.context.viewer()
        where = GroupFilter(
            visible=viewer.project_ids,
            project_id=parsed,
            status=status.value if status else None,
            level=level.value if level else None,
            environment=environment,
            release=release,
            search=search,
        )
        sessions = info.context.sessions
        page = await issue_service.list_groups(
            sessions=sessions, where=where, sort=sort.value, first=first, after=after
        )

        async def count() -> int:
            return await issue_service.count_groups(sessions=sessions, where=where)

        return connection(page, GroupType.from_row, count)

    @strawberry.field
    async def group(self, info: Info, id: strawberry.ID) -> GroupType | None:
        await info.context.require("read")
        row = await info.context.loaders.group.load(required_id(id, "id"))
        if row is None:
            return None
        await info.context.require("read", row.project_id)
        return GroupType.from_row(row)

    @strawberry.field(description="Events, newest first; `search` is full-text.")
    async def events(
        self,
        info: Info,
        project_id: strawberry.ID | None = None,
        group_id: strawberry.ID | None = None,
        level: LevelEnum | None = None,
        environment: str | None = None,
        release: str | None = None,
        user_id: strawberry.ID | None = None,
        account_id: strawberry.ID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        search: str | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[EventType]:
        parsed = await readable_project(info, project_id)
        where = EventFilter(
            project_id=parsed,
            group_id=parse_id(group_id, "groupId"),
            level=level.value if level else None,
            environment=environment,
            release=release,
            user_id=parse_id(user_id, "userId"),
            account_id=parse_id(account_id, "accountId"),
            since=since,
            until=until,
            search=search,
        )
        return await events_connection(info, where, first, after)

    @strawberry.field(description="An event by our id or by the client's event_id.")
    async def event(self, info: Info, id: strawberry.ID) -> EventType | None:
        viewer = await info.context.require("read")
        try:
            row = await event_service.event_by_ref(
                sessions=info.context.sessions, ref=str(id), visible=None
            )
        except NotFound:
            return None
        if not viewer.can_see(row.project_id):
            raise Forbidden("this event belongs to a project outside your token's projects")
        return EventType.from_row(row)

    @strawberry.field(description="The end users errors hit, most recently seen first.")
    async def users(
        self,
        info: Info,
        project_id: strawberry.ID,
        search: str | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[AffectedUserType]:
        parsed = await readable_project(info, project_id)
        assert parsed is not None
        return await _people(info, "user", parsed, search, first, after, AffectedUserType)

    @strawberry.field
    async def user(self, info: Info, id: strawberry.ID) -> AffectedUserType | None:
        await info.context.require("read")
        row = await info.context.loaders.user.load(required_id(id, "id"))
        if row is None:
            return None
        await info.context.require("read", row.project_id)
        return AffectedUserType.from_row(row)

    @strawberry.field(description="The customer accounts errors hit, most recently seen first.")
    async def accounts(
        self,
        info: Info,
        project_id: strawberry.ID,
        search: str | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[AccountType]:
        parsed = await readable_project(info, project_id)
        assert parsed is not None
        return await _people(info, "account", parsed, search, first, after, AccountType)

    @strawberry.field
    async def account(self, info: Info, id: strawberry.ID) -> AccountType | None:
        await info.context.require("read")
        row = await info.context.loaders.account.load(required_id(id, "id"))
        if row is None:
            return None
        await info.context.require("read", row.project_id)
        return AccountType.from_row(row)

    @strawberry.field(
        description="The project's short-lived log (ErrorStack /log): the last 10 messages "
        "of each key, for at most an hour, oldest first."
    )
    async def logs(self, info: Info, project_id: strawberry.ID) -> list[LogMessageType]:
        parsed = await readable_project(info, project_id)
        assert parsed is not None
        rows = await log_service.project_log_messages(
            sessions=info.context.sessions, project_id=parsed
        )
        return [LogMessageType.from_row(row) for row in rows]

    @strawberry.field(
        description="What the project's SDKs dropped before sending, per reason and category."
    )
    async def client_reports(
        self, info: Info, project_id: strawberry.ID, since: datetime | None = None
    ) -> list[ClientReportTotalType]:
        parsed = await readable_project(info, project_id)
        assert parsed is not None
        totals = await client_report_service.client_report_totals(
            sessions=info.context.sessions, project_id=parsed, since=since
        )
        return [
            ClientReportTotalType(reason=t.reason, category=t.category, quantity=t.quantity)
            for t in totals
        ]

    @strawberry.field(description="The retention policy of a project, or the server's.")
    async def retention(self, info: Info, project_id: strawberry.ID | None = None) -> RetentionType:
        parsed = await readable_project(info, project_id)
        value = await retention_service.get_retention(
            sessions=info.context.sessions,
            project_id=parsed,
            default_days=info.context.runtime.settings.retention_days,
        )
        return RetentionType.from_retention(value)

    @strawberry.field(
        description="Runs of the retention cleanup, newest first: of a project, or of every "
        "project the caller sees."
    )
    async def retention_runs(
        self,
        info: Info,
        project_id: strawberry.ID | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[RetentionRunType]:
        parsed = await readable_project(info, project_id)
        viewer = await info.context.require("read")
        sessions = info.context.sessions
        page = await retention_service.list_retention_runs(
            sessions=sessions,
            project_id=parsed,
            visible=viewer.project_ids,
            first=first,
            after=after,
        )

        async def count() -> int:
            return await retention_service.count_retention_runs(
                sessions=sessions, project_id=parsed, visible=viewer.project_ids
            )

        return connection(page, RetentionRunType.from_row, count)


async def _people(
    info: Info,
    kind: people_service.PersonKind,
    project_id: int,
    search: str | None,
    first: int | None,
    after: str | None,
    wrap: type[AffectedUserType] | type[AccountType],
) -> Connection:  # type: ignore[type-arg]
    sessions = info.context.sessions
    page = await people_service.list_people(
        sessions=sessions,
        kind=kind,
        project_id=project_id,
        search=search,
        first=first,
        after=after,
    )

    async def count() -> int:
        return await people_service.count_people(
            sessions=sessions, kind=kind, project_id=project_id, search=search
        )

    return connection(page, wrap.from_row, count)
