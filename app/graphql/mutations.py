"""The Mutation root: issue state, retention, export, capture, projects and keys.

Status changes need the `write` scope on the group's project; project and key
management needs `admin` (creating a project: an admin token not limited to projects).
"""

from __future__ import annotations

from datetime import datetime

import strawberry
from pydantic import ValidationError
from strawberry.scalars import JSON

from app.domain.event import EventIn, EventType, ExceptionIn, Level, UserIn
from app.errors import Forbidden, InvalidInput, NotFound
from app.models import Group
from app.services import exports as export_service
from app.services import issues as issue_service
from app.services import keys as key_service
from app.services import retention as retention_service
from app.services.events import EventFilter
from app.services.ingest import ingest_events

from .context import Info
from .queries import parse_id, readable_project, required_id
from .types import (
    ApiTokenType,
    BulkActionEnum,
    ExportFormatEnum,
    GroupType,
    KeyScopeEnum,
    LevelEnum,
    ProjectKeyType,
    ProjectType,
    RetentionType,
    TokenScopeEnum,
)

# The service's names for updateProjectSettings' arguments → the arguments.
SETTING_ARGUMENTS = {
    "project": "projectId",
    "scrub_fields": "scrubFields",
    "events_per_minute": "eventsPerMinute",
    "events_per_hour": "eventsPerHour",
}


@strawberry.type
class DeleteResult:
    id: strawberry.ID
    deleted: bool


@strawberry.type
class BulkFailure:
    id: strawberry.ID
    reason: str


@strawberry.type
class BulkResult:
    action: BulkActionEnum
    updated: list[strawberry.ID]
    failed: list[BulkFailure]

    @strawberry.field
    def updated_count(self) -> int:
        return len(self.updated)


@strawberry.type
class ExportResult:
    format: ExportFormatEnum
    row_count: int = strawberry.field(description="Rows in `content`.")
    truncated: bool = strawberry.field(
        description="More rows matched than `content` holds: use `downloadUrl`."
    )
    content: str = strawberry.field(description="The rows, as JSON (an array) or CSV text.")
    download_url: str = strawberry.field(
        description="GET with the same Authorization header: every row, streamed."
    )
    expires_at: datetime


@strawberry.type
class CaptureResult:
    event_id: str
    id: strawberry.ID
    group_id: strawberry.ID
    status: str = strawberry.field(description="created, existing or duplicate")

    @strawberry.field
    async def group(self, info: Info) -> GroupType | None:
        row = await info.context.loaders.group.load(int(self.group_id))
        return GroupType.from_row(row) if row else None


@strawberry.type
class ProjectCreated:
    project: ProjectType
    ingest_key: str
    api_key: str
    dsn: str
    token: str


@strawberry.type
class ProjectKeyCreated:
    key: ProjectKeyType
    secret: str = strawberry.field(description="Shown once: only a hash is stored.")
    dsn: str


@strawberry.type
class ApiTokenCreated:
    token: ApiTokenType
    secret: str = strawberry.field(description="Shown once: only a hash is stored.")


@strawberry.input
class UserInput:
    id: str | None = None
    email: str | None = None
    username: str | None = None
    name: str | None = None
    ip_address: str | None = None


@strawberry.input
class CaptureExceptionInput:
    project_id: strawberry.ID
    type: str
    value: str | None = None
    stacktrace: str | None = strawberry.field(
        default=None, description="Stack trace text (Python, V8, Firefox, Safari)."
    )
    level: LevelEnum = LevelEnum.ERROR
    event_id: str | None = None
    timestamp: datetime | None = None
    environment: str | None = None
    release: str | None = None
    user: UserInput | None = None
    tags: JSON | None = None
    extra: JSON | None = None
    fingerprint: list[str] | None = None


@strawberry.input
class CaptureMessageInput:
    project_id: strawberry.ID
    message: str
    level: LevelEnum = LevelEnum.INFO
    event_id: str | None = None
    timestamp: datetime | None = None
    environment: str | None = None
    release: str | None = None
    user: UserInput | None = None
    tags: JSON | None = None
    extra: JSON | None = None
    fingerprint: list[str] | None = None


async def _writable_group(info: Info, id: strawberry.ID) -> Group:
    await info.context.require("write")
    group = await info.context.loaders.group.load(required_id(id, "id"))
    if group is None:
        raise NotFound(f"no group {id}", field="id")
    await info.context.require("write", group.project_id)
    return group


def _user(value: UserInput | None) -> UserIn | None:
    if value is None:
        return None
    return UserIn(
        id=value.id,
        email=value.email,
        username=value.username,
        name=value.name,
        ip_address=value.ip_address,
    )


async def _capture(
    info: Info, input: CaptureExceptionInput | CaptureMessageInput, event: dict[str, object]
) -> CaptureResult:
    project_id = required_id(input.project_id, "projectId")
    await info.context.require("write", project_id)
    project = await key_service.project_by_id_or_slug(
        sessions=info.context.sessions, ref=project_id
    )
    fields: dict[str, object] = {
        "level": Level(input.level.value),
        "environment": input.environment,
        "release": input.release,
        "user": _user(input.user),
        "tags": input.tags or {},
        "extra": input.extra or {},
        "fingerprint": input.fingerprint,
        "dialect": "graphql",
        **event,
    }
    if input.event_id:
        fields["event_id"] = input.event_id
    if input.timestamp:
        fields["timestamp"] = input.timestamp
    try:
        canonical = EventIn.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise InvalidInput(f"{field}: {error['msg']}", field=field) from None
    [result] = await ingest_events(
        writer=info.context.runtime.writer, project=project, events=[canonical]
    )
    return CaptureResult(
        event_id=result.event_id,
        id=strawberry.ID(str(result.id)),
        group_id=strawberry.ID(str(result.group_id)),
        status=result.status,
    )


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def resolve_group(
        self, info: Info, id: strawberry.ID, in_next_release: bool = False
    ) -> GroupType:
        group = await _writable_group(info, id)
        assert group.id is not None
        row = await issue_service.resolve_group(
            sessions=info.context.sessions,
            group_id=group.id,
            in_next_release=in_next_release,
            pubsub=info.context.runtime.pubsub,
        )
        return GroupType.from_row(row)

    @strawberry.mutation
    async def unresolve_group(self, info: Info, id: strawberry.ID) -> GroupType:
        group = await _writable_group(info, id)
        assert group.id is not None
        row = await issue_service.unresolve_group(
            sessions=info.context.sessions, group_id=group.id, pubsub=info.context.runtime.pubsub
        )
        return GroupType.from_row(row)

    @strawberry.mutation(
        description="Ignore for good, or until a time, N more events or N more users."
    )
    async def ignore_group(
        self,
        info: Info,
        id: strawberry.ID,
        until: datetime | None = None,
        until_count: int | None = None,
        until_user_count: int | None = None,
    ) -> GroupType:
        group = await _writable_group(info, id)
        assert group.id is not None
        row = await issue_service.ignore_group(
            sessions=info.context.sessions,
            group_id=group.id,
            until=until,
            until_count=until_count,
            until_user_count=until_user_count,
            pubsub=info.context.runtime.pubsub,
        )
        return GroupType.from_row(row)

    @strawberry.mutation(description="Delete a group and its events.")
    async def delete_group(self, info: Info, id: strawberry.ID) -> DeleteResult:
        group = await _writable_group(info, id)
        assert group.id is not None
        await issue_service.delete_group(
            sessions=info.context.sessions, group_id=group.id, pubsub=info.context.runtime.pubsub
        )
        return DeleteResult(id=strawberry.ID(str(group.id)), deleted=True)

    @strawberry.mutation
    async def bulk_update_groups(
        self, info: Info, ids: list[strawberry.ID], action: BulkActionEnum
    ) -> BulkResult:
        viewer = await info.context.require("write")
        parsed: list[int] = []
        failed: list[BulkFailure] = []
        for value in ids:
            try:
                parsed.append(required_id(value, "ids"))
            except NotFound:
                failed.append(BulkFailure(id=value, reason="not found"))
        outcome = await issue_service.bulk_update_groups(
            sessions=info.context.sessions,
            ids=parsed,
            action=action.value,
            visible=viewer.project_ids,
            pubsub=info.context.runtime.pubsub,
        )
        failed += [
            BulkFailure(id=strawberry.ID(str(group_id)), reason=reason)
            for group_id, reason in outcome.failed.items()
        ]
        return BulkResult(
            action=action,
            updated=[strawberry.ID(str(group_id)) for group_id in outcome.updated],
            failed=failed,
        )

    @strawberry.mutation(description="Set a project's retention, or the server default.")
    async def set_retention(
        self,
        info: Info,
        days: int,
        project_id: strawberry.ID | None = None,
        auto_export_before_cleanup: bool | None = None,
        export_destination: str | None = None,
    ) -> RetentionType:
        parsed = parse_id(project_id, "projectId")
        viewer = await info.context.require("admin", parsed)
        if parsed is None and viewer.project_ids is not None:
            raise Forbidden("the server default needs a token not limited to projects")
        if parsed is not None:
            await readable_project(info, project_id)
        value = await retention_service.set_retention(
            sessions=info.context.sessions,
            project_id=parsed,
            days=days,
            auto_export_before_cleanup=auto_export_before_cleanup,
            export_destination=export_destination,
            default_days=info.context.runtime.settings.retention_days,
        )
        return RetentionType.from_retention(value)

    @strawberry.mutation(
        description="Export events: up to 1000 rows inline, all of them at downloadUrl."
    )
    async def export_events(
        self,
        info: Info,
        format: ExportFormatEnum,
        project_id: strawberry.ID | None = None,
        group_id: strawberry.ID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> ExportResult:
        parsed = await readable_project(info, project_id)
        viewer = await info.context.viewer()
        parsed_group = parse_id(group_id, "groupId")
        if parsed_group is not None:
            group = await info.context.loaders.group.load(parsed_group)
            if group is None:
                raise NotFound(f"no group {group_id}", field="groupId")
            await info.context.require("read", group.project_id)
        where = EventFilter(
            visible=viewer.project_ids,
            project_id=parsed,
            group_id=parsed_group,
            since=since,
            until=until,
        )
        sessions = info.context.sessions
        request = await export_service.create_export_request(
            sessions=sessions, where=where, format=format.value
        )
        inline = await export_service.export_inline(
            sessions=sessions, where=where, format=format.value
        )
        base = info.context.runtime.settings.base_url()
        return ExportResult(
            format=format,
            row_count=inline.row_count,
            truncated=inline.truncated,
            content=inline.content,
            download_url=f"{base}/export/{request.id}",
            expires_at=request.expires_at,
        )

    @strawberry.mutation
    async def capture_exception(self, info: Info, input: CaptureExceptionInput) -> CaptureResult:
        return await _capture(
            info,
            input,
            {
                "type": EventType.EXCEPTION,
                "exceptions": [ExceptionIn(type=input.type, value=input.value)],
                "raw_stacktrace": input.stacktrace,
            },
        )

    @strawberry.mutation
    async def capture_message(self, info: Info, input: CaptureMessageInput) -> CaptureResult:
        return await _capture(info, input, {"type": EventType.MESSAGE, "message": input.message})

    @strawberry.mutation(description="Create a project with keys, a DSN and a token for it.")
    async def create_project(self, info: Info, name: str) -> ProjectCreated:
        viewer = await info.context.require("admin")
        if viewer.project_ids is not None:
            raise Forbidden("creating projects needs an admin token not limited to projects")
        created = await key_service.create_project(sessions=info.context.sessions, name=name)
        project = created.project
        assert project.id is not None
        settings = info.context.runtime.settings
        return ProjectCreated(
            project=ProjectType.from_row(project),
            ingest_key=created.ingest_key.secret,
            api_key=created.api_key.secret,
            dsn=settings.dsn_for(key=created.ingest_key.secret, project_id=project.id),
            token=created.token.secret,
        )

    @strawberry.mutation
    async def create_project_key(
        self,
        info: Info,
        project_id: strawberry.ID,
        scopes: list[KeyScopeEnum],
        label: str = "",
    ) -> ProjectKeyCreated:
        parsed = required_id(project_id, "projectId")
        await info.context.require("admin", parsed)
        created = await key_service.create_project_key(
            sessions=info.context.sessions,
            project_id=parsed,
            scopes=[scope.value for scope in scopes],
            label=label,
        )
        return ProjectKeyCreated(
            key=ProjectKeyType.from_row(created.key),
            secret=created.secret,
            dsn=info.context.runtime.settings.dsn_for(key=created.secret, project_id=parsed),
        )

    @strawberry.mutation(
        description="Change a project's scrubbing and quotas; arguments left out stay as "
        "they are. eventsPerMinute/eventsPerHour: null takes the server's default, 0 means "
        "no limit."
    )
    async def update_project_settings(
        self,
        info: Info,
        project_id: strawberry.ID,
        scrub_fields: list[str] | None = strawberry.UNSET,
        scrub_ip_addresses: bool | None = strawberry.UNSET,
        events_per_minute: int | None = strawberry.UNSET,
        events_per_hour: int | None = strawberry.UNSET,
    ) -> ProjectType:
        parsed = required_id(project_id, "projectId")
        await info.context.require("admin", parsed)

        def given(value: object) -> object:
            return key_service.KEEP if value is strawberry.UNSET else value

        if scrub_ip_addresses is None:
            raise InvalidInput("scrubIpAddresses must be true or false", field="scrubIpAddresses")
        try:
            project = await key_service.update_project_settings(
                sessions=info.context.sessions,
                project_id=parsed,
                scrub_fields=given(scrub_fields),  # type: ignore[arg-type]
                scrub_ip_addresses=given(scrub_ip_addresses),  # type: ignore[arg-type]
                events_per_minute=given(events_per_minute),  # type: ignore[arg-type]
                events_per_hour=given(events_per_hour),  # type: ignore[arg-type]
            )
        except (InvalidInput, NotFound) as exc:
            exc.field = SETTING_ARGUMENTS.get(exc.field or "", exc.field)
            raise
        return ProjectType.from_row(project)

    @strawberry.mutation(
        description="Create an API token for this API. projectIds limits it to those "
        "projects (null: every project); a caller whose own token is limited to projects "
        "creates tokens limited to some of them."
    )
    async def create_api_token(
        self,
        info: Info,
        scopes: list[TokenScopeEnum],
        label: str = "",
        project_ids: list[strawberry.ID] | None = None,
    ) -> ApiTokenCreated:
        viewer = await info.context.require("admin")
        parsed = (
            None
            if project_ids is None
            else sorted({required_id(value, "projectIds") for value in project_ids})
        )
        if not viewer.can_see_all(parsed):
            raise Forbidden(
                "your token is limited to projects: the new one must be limited to some of "
                "them (projectIds)",
                field="projectIds",
            )
        try:
            created = await key_service.create_api_token(
                sessions=info.context.sessions,
                scopes=[scope.value for scope in scopes],
                label=label,
                project_ids=parsed,
            )
        except (InvalidInput, NotFound) as exc:
            exc.field = {"project": "projectIds", "scope": "scopes"}.get(exc.field or "", exc.field)
            raise
        return ApiTokenCreated(token=ApiTokenType.from_row(created.token), secret=created.secret)

    @strawberry.mutation(
        description="Revoke an API token: requests bearing it are refused from now on (by "
        "other server processes within KEY_CACHE_SECONDS)."
    )
    async def revoke_api_token(self, info: Info, id: strawberry.ID) -> ApiTokenType:
        token_id = required_id(id, "id")
        viewer = await info.context.require("admin")
        sessions = info.context.sessions
        token = await key_service.api_token_by_id(sessions=sessions, token_id=token_id)
        if not viewer.can_see_all(token.project_ids):
            raise Forbidden("this token reaches projects outside your token's projects")
        row = await key_service.revoke_api_token(sessions=sessions, token_id=token_id)
        return ApiTokenType.from_row(row)

    @strawberry.mutation
    async def revoke_project_key(self, info: Info, id: strawberry.ID) -> ProjectKeyType:
        key_id = required_id(id, "id")
        viewer = await info.context.require("admin")
        keys = await key_service.project_key_by_id(sessions=info.context.sessions, key_id=key_id)
        if not viewer.can_see(keys.project_id):
            raise Forbidden("this key belongs to a project outside your token's projects")
        row = await key_service.revoke_project_key(sessions=info.context.sessions, key_id=key_id)
        return ProjectKeyType.from_row(row)
