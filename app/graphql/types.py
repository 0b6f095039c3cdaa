"""GraphQL types. Each wraps a row a service returned; relations go through the request's
dataloaders, so a list resolves its relations in a constant number of queries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import Enum
from typing import Any, Generic, TypeVar

import strawberry
from strawberry.scalars import JSON

from app.errors import NotFound
from app.models import Account, AffectedUser, ApiToken, Event, Group, Project, ProjectKey
from app.services import events as event_service
from app.services import issues as issue_service
from app.services import people as people_service
from app.services import retention as retention_service
from app.services.events import EventFilter
from app.services.pagination import Page
from app.services.retention import Retention

from .context import Info

T = TypeVar("T")


@strawberry.enum(name="GroupStatus")
class GroupStatusEnum(Enum):
    UNRESOLVED = "unresolved"
    RESOLVED = "resolved"
    IGNORED = "ignored"


@strawberry.enum(name="GroupSort")
class GroupSortEnum(Enum):
    LAST_SEEN_DESC = "LAST_SEEN_DESC"
    FIRST_SEEN_DESC = "FIRST_SEEN_DESC"
    COUNT_DESC = "COUNT_DESC"
    USER_COUNT_DESC = "USER_COUNT_DESC"


@strawberry.enum(name="Level")
class LevelEnum(Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    FATAL = "fatal"


@strawberry.enum(name="EventType")
class EventTypeEnum(Enum):
    EXCEPTION = "exception"
    MESSAGE = "message"
    LOG = "log"


@strawberry.enum(name="BulkAction")
class BulkActionEnum(Enum):
    RESOLVE = "RESOLVE"
    UNRESOLVE = "UNRESOLVE"
    IGNORE = "IGNORE"
    DELETE = "DELETE"


@strawberry.enum(name="ExportFormat")
class ExportFormatEnum(Enum):
    JSON = "JSON"
    CSV = "CSV"


@strawberry.enum(name="HistogramInterval")
class IntervalEnum(Enum):
    HOUR = "HOUR"
    DAY = "DAY"


@strawberry.enum(name="KeyScope")
class KeyScopeEnum(Enum):
    INGEST = "ingest"
    READ = "read"
    WRITE = "write"


@strawberry.enum(name="TokenScope")
class TokenScopeEnum(Enum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


def _enum_or_none(enum: type[Enum], value: str | None) -> Any:
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        return None


@strawberry.type(name="PageInfo")
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type(name="Edge")
class Edge(Generic[T]):
    cursor: str
    node: T


@strawberry.type(name="Connection")
class Connection(Generic[T]):
    edges: list[Edge[T]]
    page_info: PageInfo
    _count: strawberry.Private[Callable[[], Awaitable[int]]]

    @strawberry.field(description="How many items match, over all pages.")
    async def total_count(self) -> int:
        return await self._count()


def connection(
    page: Page[Any], wrap: Callable[[Any], T], count: Callable[[], Awaitable[int]]
) -> Connection[T]:
    return Connection(
        edges=[
            Edge(cursor=cursor, node=wrap(item))
            for item, cursor in zip(page.items, page.cursors, strict=True)
        ],
        page_info=PageInfo(has_next_page=page.has_next, end_cursor=page.end_cursor),
        _count=count,
    )


@strawberry.type(name="ApiToken")
class ApiTokenType:
    id: strawberry.ID
    label: str
    prefix: str = strawberry.field(description="The start of the token; the rest is not stored.")
    scopes: list[TokenScopeEnum]
    project_ids: list[strawberry.ID] | None = strawberry.field(
        description="The projects it is limited to; null: every project."
    )
    created_at: datetime
    revoked_at: datetime | None

    @strawberry.field
    def is_active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_row(cls, row: ApiToken) -> ApiTokenType:
        return cls(
            id=strawberry.ID(str(row.id)),
            label=row.label,
            prefix=row.prefix,
            scopes=[TokenScopeEnum(scope) for scope in row.scopes.split(",")],
            project_ids=(
                None
                if row.project_ids is None
                else [strawberry.ID(str(project_id)) for project_id in row.project_ids]
            ),
            created_at=row.created_at,
            revoked_at=row.revoked_at,
        )


@strawberry.type(name="Project")
class ProjectType:
    id: strawberry.ID
    slug: str
    name: str
    grouping_strategy: str
    created_at: datetime
    scrub_fields: list[str] = strawberry.field(
        description="Key names whose values are replaced with [Filtered] before storage, "
        "on top of the built-in ones (password, secret, token, api_key, cookie, …)."
    )
    scrub_ip_addresses: bool = strawberry.field(
        description="Client IP addresses (and users' ip_address) are dropped before storage."
    )
    events_per_minute: int | None = strawberry.field(
        description="Events a project key may send a minute: null takes the server's "
        "default, 0 means no limit."
    )
    events_per_hour: int | None = strawberry.field(
        description="Events a project key may send an hour: null takes the server's "
        "default, 0 means no limit."
    )

    @classmethod
    def from_row(cls, row: Project) -> ProjectType:
        return cls(
            id=strawberry.ID(str(row.id)),
            slug=row.slug,
            name=row.name,
            grouping_strategy=row.grouping_strategy,
            created_at=row.created_at,
            scrub_fields=list(row.scrub_fields or []),
            scrub_ip_addresses=row.scrub_ip_addresses,
            events_per_minute=row.events_per_minute,
            events_per_hour=row.events_per_hour,
        )


@strawberry.type(name="ProjectKey")
class ProjectKeyType:
    id: strawberry.ID
    project_id: strawberry.ID
    label: str
    prefix: str = strawberry.field(description="The start of the key; the rest is not stored.")
    scopes: list[KeyScopeEnum]
    created_at: datetime
    revoked_at: datetime | None

    @strawberry.field
    def is_active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_row(cls, row: ProjectKey) -> ProjectKeyType:
        return cls(
            id=strawberry.ID(str(row.id)),
            project_id=strawberry.ID(str(row.project_id)),
            label=row.label,
            prefix=row.prefix,
            scopes=[KeyScopeEnum(scope) for scope in row.scopes.split(",")],
            created_at=row.created_at,
            revoked_at=row.revoked_at,
        )


@strawberry.type(name="MinifiedFrame")
class MinifiedFrameType:
    filename: str | None
    abs_path: str | None
    function: str | None
    lineno: int | None
    colno: int | None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> MinifiedFrameType | None:
        if not data:
            return None
        return cls(
            filename=data.get("filename"),
            abs_path=data.get("abs_path"),
            function=data.get("function"),
            lineno=data.get("lineno"),
            colno=data.get("colno"),
        )


@strawberry.type(name="Frame")
class FrameType:
    filename: str | None
    abs_path: str | None
    function: str | None
    module: str | None
    lineno: int | None
    colno: int | None
    in_app: bool | None
    context_line: str | None
    pre_context: list[str]
    post_context: list[str]
    vars: JSON | None
    minified: MinifiedFrameType | None = strawberry.field(
        description="Where the frame was in minified code, when a source map resolved it."
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameType:
        return cls(
            filename=data.get("filename"),
            abs_path=data.get("abs_path"),
            function=data.get("function"),
            module=data.get("module"),
            lineno=data.get("lineno"),
            colno=data.get("colno"),
            in_app=data.get("in_app"),
            context_line=data.get("context_line"),
            pre_context=list(data.get("pre_context") or []),
            post_context=list(data.get("post_context") or []),
            vars=data.get("vars") or None,
            minified=MinifiedFrameType.from_dict(data.get("minified")),
        )


@strawberry.type(name="ExceptionValue")
class ExceptionType:
    type: str | None
    value: str | None
    module: str | None
    mechanism: JSON | None
    frames: list[FrameType]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExceptionType:
        return cls(
            type=data.get("type"),
            value=data.get("value"),
            module=data.get("module"),
            mechanism=data.get("mechanism"),
            frames=[FrameType.from_dict(frame) for frame in data.get("frames") or []],
        )


@strawberry.type(name="AffectedUser")
class AffectedUserType:
    id: strawberry.ID
    project_id: strawberry.ID
    external_id: str
    email: str | None
    username: str | None
    name: str | None
    ip_address: str | None
    data: JSON | None
    first_seen: datetime
    last_seen: datetime
    event_count: int

    @classmethod
    def from_row(cls, row: AffectedUser) -> AffectedUserType:
        return cls(
            id=strawberry.ID(str(row.id)),
            project_id=strawberry.ID(str(row.project_id)),
            external_id=row.external_id,
            email=row.email,
            username=row.username,
            name=row.name,
            ip_address=row.ip_address,
            data=row.data,
            first_seen=row.first_seen,
            last_seen=row.last_seen,
            event_count=row.event_count,
        )

    @strawberry.field
    async def groups(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[GroupType]:
        return await _groups_of_person(info, "user", int(self.id), first, after)

    @strawberry.field
    async def events(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[EventType]:
        return await events_connection(info, EventFilter(user_id=int(self.id)), first, after)


@strawberry.type(name="Account")
class AccountType:
    id: strawberry.ID
    project_id: strawberry.ID
    external_id: str
    name: str | None
    data: JSON | None
    first_seen: datetime
    last_seen: datetime
    event_count: int

    @classmethod
    def from_row(cls, row: Account) -> AccountType:
        return cls(
            id=strawberry.ID(str(row.id)),
            project_id=strawberry.ID(str(row.project_id)),
            external_id=row.external_id,
            name=row.name,
            data=row.data,
            first_seen=row.first_seen,
            last_seen=row.last_seen,
            event_count=row.event_count,
        )

    @strawberry.field
    async def groups(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[GroupType]:
        return await _groups_of_person(info, "account", int(self.id), first, after)

    @strawberry.field
    async def events(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[EventType]:
        return await events_connection(info, EventFilter(account_id=int(self.id)), first, after)


async def _groups_of_person(
    info: Info,
    kind: people_service.PersonKind,
    person_id: int,
    first: int | None,
    after: str | None,
) -> Connection[GroupType]:
    sessions = info.context.sessions
    page = await people_service.groups_of_person(
        sessions=sessions, kind=kind, person_id=person_id, first=first, after=after
    )

    async def count() -> int:
        return await people_service.count_groups_of_person(
            sessions=sessions, kind=kind, person_id=person_id
        )

    return connection(page, GroupType.from_row, count)


@strawberry.type(name="TagValue")
class TagValueType:
    value: str
    count: int


@strawberry.type(name="Tag")
class TagType:
    key: str
    values: list[TagValueType]


@strawberry.type(name="HistogramBucket")
class BucketType:
    start: datetime
    count: int


@strawberry.type(name="SeenValue", description="A release or environment of a group.")
class SeenType:
    name: str
    count: int
    first_seen: datetime
    last_seen: datetime


@strawberry.type(name="Group")
class GroupType:
    id: strawberry.ID
    project_id: strawberry.ID
    fingerprint: str
    grouping_strategy: str
    grouping_reason: str
    title: str
    culprit: str | None
    exception_type: str | None
    message: str | None
    level: LevelEnum | None
    platform: str | None
    status: GroupStatusEnum
    count: int
    user_count: int
    account_count: int
    first_seen: datetime
    last_seen: datetime
    first_release: str | None
    last_release: str | None
    is_regression: bool
    resolved_at: datetime | None
    resolved_in_release: str | None
    ignored_at: datetime | None
    ignore_until: datetime | None
    ignore_until_count: int | None
    ignore_until_user_count: int | None

    @classmethod
    def from_row(cls, row: Group) -> GroupType:
        return cls(
            id=strawberry.ID(str(row.id)),
            project_id=strawberry.ID(str(row.project_id)),
            fingerprint=row.fingerprint,
            grouping_strategy=row.grouping_strategy,
            grouping_reason=row.grouping_reason,
            title=row.title,
            culprit=row.culprit,
            exception_type=row.exception_type,
            message=row.message,
            level=_enum_or_none(LevelEnum, row.level),
            platform=row.platform,
            status=GroupStatusEnum(row.status),
            count=row.count,
            user_count=row.user_count,
            account_count=row.account_count,
            first_seen=row.first_seen,
            last_seen=row.last_seen,
            first_release=row.first_release,
            last_release=row.last_release,
            is_regression=row.is_regression,
            resolved_at=row.resolved_at,
            resolved_in_release=row.resolved_in_release,
            ignored_at=row.ignored_at,
            ignore_until=row.ignore_until,
            ignore_until_count=row.ignore_until_count,
            ignore_until_user_count=row.ignore_until_user_count,
        )

    @strawberry.field
    async def project(self, info: Info) -> ProjectType:
        return await load_project(info, int(self.project_id))

    @strawberry.field
    async def latest_event(self, info: Info) -> EventType | None:
        row = await info.context.loaders.latest_event.load(int(self.id))
        return EventType.from_row(row) if row else None

    @strawberry.field
    async def events(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[EventType]:
        return await events_connection(info, EventFilter(group_id=int(self.id)), first, after)

    @strawberry.field(
        description="Events per hour or day from `since` to `until` (default now), "
        "empty buckets included."
    )
    async def histogram(
        self,
        info: Info,
        interval: IntervalEnum = IntervalEnum.HOUR,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[BucketType]:
        buckets = await issue_service.group_histogram(
            sessions=info.context.sessions,
            group_id=int(self.id),
            interval=interval.value,
            since=since,
            until=until,
        )
        return [BucketType(start=start, count=count) for start, count in buckets]

    @strawberry.field(description="Tag keys with their most frequent values.")
    async def tags(self, info: Info, top: int = 10) -> list[TagType]:
        tags = await issue_service.group_tags(
            sessions=info.context.sessions, group_id=int(self.id), top=max(1, min(top, 100))
        )
        return [
            TagType(key=key, values=[TagValueType(value=v, count=c) for v, c in values])
            for key, values in tags.items()
        ]

    @strawberry.field
    async def users(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[AffectedUserType]:
        page = await people_service.people_of_group(
            sessions=info.context.sessions,
            kind="user",
            group_id=int(self.id),
            first=first,
            after=after,
        )
        return connection(page, AffectedUserType.from_row, _constant(self.user_count))

    @strawberry.field
    async def accounts(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[AccountType]:
        page = await people_service.people_of_group(
            sessions=info.context.sessions,
            kind="account",
            group_id=int(self.id),
            first=first,
            after=after,
        )
        return connection(page, AccountType.from_row, _constant(self.account_count))

    @strawberry.field
    async def releases(self, info: Info) -> list[SeenType]:
        rows = await issue_service.group_releases(
            sessions=info.context.sessions, group_id=int(self.id)
        )
        return [SeenType(**vars(row)) for row in rows]

    @strawberry.field
    async def environments(self, info: Info) -> list[SeenType]:
        rows = await issue_service.group_environments(
            sessions=info.context.sessions, group_id=int(self.id)
        )
        return [SeenType(**vars(row)) for row in rows]


def _constant(value: int) -> Callable[[], Awaitable[int]]:
    async def count() -> int:
        return value

    return count


@strawberry.type(name="Event")
class EventType:
    id: strawberry.ID
    event_id: str
    project_id: strawberry.ID
    group_id: strawberry.ID
    timestamp: datetime
    received_at: datetime
    type: EventTypeEnum
    level: LevelEnum | None
    platform: str | None
    logger: str | None
    environment: str | None
    release: str | None
    server_name: str | None
    transaction: str | None
    message: str | None
    exception: list[ExceptionType] = strawberry.field(
        description="The exception chain: the root cause first, the one that surfaced last."
    )
    raw_stacktrace: str | None
    url: str | None
    user_agent: str | None
    session_id: str | None
    window_id: str | None
    source: str = strawberry.field(description="The dialect the event came in through.")
    client_ip: str | None
    fingerprint: list[str] | None
    request: JSON | None
    breadcrumbs: JSON | None
    tags: JSON | None
    extra: JSON | None
    contexts: JSON | None
    user_data: JSON | None = strawberry.field(description="The user as the client sent it.")
    account_data: JSON | None = strawberry.field(description="The account as the client sent it.")
    _user_id: strawberry.Private[int | None]
    _account_id: strawberry.Private[int | None]

    @classmethod
    def from_row(cls, row: Event) -> EventType:
        return cls(
            id=strawberry.ID(str(row.id)),
            event_id=row.event_id,
            project_id=strawberry.ID(str(row.project_id)),
            group_id=strawberry.ID(str(row.group_id)),
            timestamp=row.timestamp,
            received_at=row.received_at,
            type=EventTypeEnum(row.type),
            level=_enum_or_none(LevelEnum, row.level),
            platform=row.platform,
            logger=row.logger,
            environment=row.environment,
            release=row.release,
            server_name=row.server_name,
            transaction=row.transaction,
            message=row.message,
            exception=[ExceptionType.from_dict(exc) for exc in row.exceptions or []],
            raw_stacktrace=row.raw_stacktrace,
            url=row.url,
            user_agent=row.user_agent,
            session_id=row.session_id,
            window_id=row.window_id,
            source=row.dialect,
            client_ip=row.client_ip,
            fingerprint=row.fingerprint,
            request=row.request,
            breadcrumbs=row.breadcrumbs,
            tags=row.tags,
            extra=row.extra,
            contexts=row.contexts,
            user_data=row.user,
            account_data=row.account,
            _user_id=row.affected_user_id,
            _account_id=row.account_id,
        )

    @strawberry.field
    async def group(self, info: Info) -> GroupType | None:
        row = await info.context.loaders.group.load(int(self.group_id))
        return GroupType.from_row(row) if row else None

    @strawberry.field
    async def project(self, info: Info) -> ProjectType:
        return await load_project(info, int(self.project_id))

    @strawberry.field(description="The affected user this event counted for.")
    async def user(self, info: Info) -> AffectedUserType | None:
        if self._user_id is None:
            return None
        row = await info.context.loaders.user.load(self._user_id)
        return AffectedUserType.from_row(row) if row else None

    @strawberry.field(description="The customer account this event counted for.")
    async def account(self, info: Info) -> AccountType | None:
        if self._account_id is None:
            return None
        row = await info.context.loaders.account.load(self._account_id)
        return AccountType.from_row(row) if row else None


async def load_project(info: Info, project_id: int) -> ProjectType:
    row = await info.context.loaders.project.load(project_id)
    if row is None:
        raise NotFound(f"no project {project_id}")
    return ProjectType.from_row(row)


async def events_connection(
    info: Info, where: EventFilter, first: int | None, after: str | None
) -> Connection[EventType]:
    """Events the viewer may see, matching `where`, newest first."""
    viewer = await info.context.require("read")
    where = EventFilter(**{**vars(where), "visible": viewer.project_ids})
    sessions = info.context.sessions
    page = await event_service.list_events(sessions=sessions, where=where, first=first, after=after)

    async def count() -> int:
        return await event_service.count_events(sessions=sessions, where=where)

    return connection(page, EventType.from_row, count)


@strawberry.enum(name="RetentionRunStatus")
class RetentionRunStatusEnum(Enum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"


@strawberry.type(name="RetentionRun", description="One run of the retention cleanup.")
class RetentionRunType:
    id: strawberry.ID
    project_id: strawberry.ID | None
    started_at: datetime
    finished_at: datetime | None
    status: RetentionRunStatusEnum
    events_deleted: int
    groups_deleted: int
    exported_to: str | None = strawberry.field(
        description="The export file (a file:// URL) written before deleting, if any."
    )
    error: str | None = strawberry.field(
        description="Why the run failed. When the export failed, nothing was deleted."
    )

    @classmethod
    def from_row(cls, row: Any) -> RetentionRunType:
        return cls(
            id=strawberry.ID(str(row.id)),
            project_id=strawberry.ID(str(row.project_id)) if row.project_id else None,
            started_at=row.started_at,
            finished_at=row.finished_at,
            status=RetentionRunStatusEnum(row.status),
            events_deleted=row.events_deleted,
            groups_deleted=row.groups_deleted,
            exported_to=row.exported_to,
            error=row.error,
        )


@strawberry.type(name="RetentionPolicy")
class RetentionType:
    project_id: strawberry.ID | None
    days: int
    auto_export_before_cleanup: bool
    export_destination: str | None
    is_default: bool = strawberry.field(
        description="True when the project inherits the server's policy."
    )

    @strawberry.field(
        description="The newest cleanup run of this project; for the server default, of "
        "any project the caller sees."
    )
    async def last_run(self, info: Info) -> RetentionRunType | None:
        viewer = await info.context.require("read")
        row = await retention_service.latest_retention_run(
            sessions=info.context.sessions,
            project_id=int(self.project_id) if self.project_id else None,
            visible=viewer.project_ids,
        )
        return RetentionRunType.from_row(row) if row else None

    @classmethod
    def from_retention(cls, value: Retention) -> RetentionType:
        return cls(
            project_id=strawberry.ID(str(value.project_id)) if value.project_id else None,
            days=value.days,
            auto_export_before_cleanup=value.auto_export_before_cleanup,
            export_destination=value.export_destination,
            is_default=value.is_default,
        )


@strawberry.type(name="LogMessage", description="A message of the ErrorStack log (/log).")
class LogMessageType:
    id: strawberry.ID
    project_key_id: strawberry.ID
    created_at: datetime
    level: str | None
    message: str
    data: JSON | None

    @classmethod
    def from_row(cls, row: Any) -> LogMessageType:
        return cls(
            id=strawberry.ID(str(row.id)),
            project_key_id=strawberry.ID(str(row.project_key_id)),
            created_at=row.created_at,
            level=row.level,
            message=row.message,
            data=row.data,
        )


@strawberry.type(
    name="ClientReportTotal",
    description="Items an SDK dropped before sending (Sentry client reports), summed.",
)
class ClientReportTotalType:
    reason: str
    category: str
    quantity: int
