"""Alert rules and their deliveries over GraphQL, merged into the Query and Mutation roots
by the schema.

Rules hold webhook URLs and addresses (a Slack webhook URL is a credential), so reading
and changing them needs the `admin` scope on the project; the delivery log needs `read`.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry
from strawberry.scalars import JSON

from app.models import AlertDelivery, AlertRule
from app.services import alerts as alert_service

from .context import Info
from .queries import readable_project, required_id
from .types import Connection, GroupType, connection


@strawberry.enum(name="AlertTrigger")
class AlertTriggerEnum(Enum):
    NEW_ISSUE = "new_issue"
    REGRESSION = "regression"
    FREQUENCY = "frequency"


@strawberry.enum(name="AlertChannel")
class AlertChannelEnum(Enum):
    EMAIL = "email"
    POSTMARK = "postmark"
    WEBHOOK = "webhook"
    SLACK = "slack"


@strawberry.enum(name="AlertDeliveryStatus")
class AlertDeliveryStatusEnum(Enum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    DIGESTED = "digested"


@strawberry.type(name="AlertRule")
class AlertRuleType:
    id: strawberry.ID
    project_id: strawberry.ID
    name: str
    trigger: AlertTriggerEnum
    threshold: int | None = strawberry.field(description="Frequency: more than this many events…")
    window_minutes: int | None = strawberry.field(description="…in this many minutes.")
    channel: AlertChannelEnum
    target: str = strawberry.field(description="Addresses (comma-separated) or a URL.")
    options: JSON | None = strawberry.field(description='Webhooks: {"headers": {…}}.')
    enabled: bool
    managed: bool = strawberry.field(
        description="Stands for the server's ALERT_EMAILS: only `enabled` can be changed."
    )
    created_at: datetime

    @classmethod
    def from_row(cls, row: AlertRule) -> AlertRuleType:
        options = {k: v for k, v in (row.options or {}).items() if k != "managed"}
        return cls(
            id=strawberry.ID(str(row.id)),
            project_id=strawberry.ID(str(row.project_id)),
            name=row.name,
            trigger=AlertTriggerEnum(row.trigger),
            threshold=row.threshold,
            window_minutes=row.window_minutes,
            channel=AlertChannelEnum(row.channel),
            target=row.target,
            options=options or None,
            enabled=row.enabled,
            managed=alert_service.is_managed(row),
            created_at=row.created_at,
        )


@strawberry.type(name="AlertDelivery")
class AlertDeliveryType:
    id: strawberry.ID
    rule_id: strawberry.ID
    group_id: strawberry.ID | None
    kind: str = strawberry.field(description="new_issue, regression, frequency or digest")
    status: AlertDeliveryStatusEnum
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None

    @strawberry.field
    async def group(self, info: Info) -> GroupType | None:
        if self.group_id is None:
            return None
        row = await info.context.loaders.group.load(int(self.group_id))
        return GroupType.from_row(row) if row else None

    @classmethod
    def from_row(cls, row: AlertDelivery) -> AlertDeliveryType:
        return cls(
            id=strawberry.ID(str(row.id)),
            rule_id=strawberry.ID(str(row.rule_id)),
            group_id=strawberry.ID(str(row.group_id)) if row.group_id else None,
            kind=row.kind,
            status=AlertDeliveryStatusEnum(row.status),
            attempts=row.attempts,
            last_error=row.last_error,
            created_at=row.created_at,
            sent_at=row.sent_at,
        )


@strawberry.input
class AlertRuleInput:
    project_id: strawberry.ID
    trigger: AlertTriggerEnum
    channel: AlertChannelEnum
    target: str
    name: str = ""
    threshold: int | None = None
    window_minutes: int | None = None
    options: JSON | None = None
    enabled: bool = True


@strawberry.input(description="Fields left out keep their value.")
class AlertRulePatch:
    trigger: AlertTriggerEnum | None = None
    channel: AlertChannelEnum | None = None
    target: str | None = None
    name: str | None = None
    threshold: int | None = strawberry.UNSET
    window_minutes: int | None = strawberry.UNSET
    options: JSON | None = strawberry.UNSET
    enabled: bool | None = None


@strawberry.type
class AlertRuleDeleted:
    id: strawberry.ID
    deleted: bool


async def _admin_rule(info: Info, id: strawberry.ID) -> AlertRule:
    await info.context.require("admin")
    rule = await alert_service.get_alert_rule(
        sessions=info.context.sessions, rule_id=required_id(id, "id")
    )
    await info.context.require("admin", rule.project_id)
    return rule


def _kept(value: object) -> object:
    """UNSET (left out) → the service's "keep"; anything else, null included, is a value."""
    return alert_service.KEEP if value is strawberry.UNSET else value


@strawberry.type
class AlertQuery:
    @strawberry.field(description="A project's alert rules (needs the admin scope).")
    async def alert_rules(self, info: Info, project_id: strawberry.ID) -> list[AlertRuleType]:
        parsed = required_id(project_id, "projectId")
        await info.context.require("admin", parsed)
        rows = await alert_service.list_alert_rules(
            sessions=info.context.sessions, project_id=parsed
        )
        return [AlertRuleType.from_row(row) for row in rows]

    @strawberry.field(description="A project's notifications, newest first.")
    async def alert_deliveries(
        self,
        info: Info,
        project_id: strawberry.ID,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[AlertDeliveryType]:
        parsed = await readable_project(info, project_id)
        assert parsed is not None
        sessions = info.context.sessions
        page = await alert_service.list_alert_deliveries(
            sessions=sessions, project_id=parsed, first=first, after=after
        )

        async def count() -> int:
            return await alert_service.count_alert_deliveries(sessions=sessions, project_id=parsed)

        return connection(page, AlertDeliveryType.from_row, count)


@strawberry.type
class AlertMutation:
    @strawberry.mutation(description="Tell someone when an issue is new, comes back or is busy.")
    async def create_alert_rule(self, info: Info, input: AlertRuleInput) -> AlertRuleType:
        project_id = required_id(input.project_id, "projectId")
        await info.context.require("admin", project_id)
        row = await alert_service.create_alert_rule(
            sessions=info.context.sessions,
            project_id=project_id,
            trigger=input.trigger.value,
            channel=input.channel.value,
            target=input.target,
            name=input.name,
            threshold=input.threshold,
            window_minutes=input.window_minutes,
            options=input.options,
            enabled=input.enabled,
        )
        return AlertRuleType.from_row(row)

    @strawberry.mutation
    async def update_alert_rule(
        self, info: Info, id: strawberry.ID, input: AlertRulePatch
    ) -> AlertRuleType:
        rule = await _admin_rule(info, id)
        assert rule.id is not None
        row = await alert_service.update_alert_rule(
            sessions=info.context.sessions,
            rule_id=rule.id,
            trigger=input.trigger.value if input.trigger else None,
            channel=input.channel.value if input.channel else None,
            target=input.target,
            name=input.name,
            threshold=_kept(input.threshold),  # type: ignore[arg-type]
            window_minutes=_kept(input.window_minutes),  # type: ignore[arg-type]
            options=_kept(input.options),  # type: ignore[arg-type]
            enabled=input.enabled,
        )
        return AlertRuleType.from_row(row)

    @strawberry.mutation(description="Delete a rule and its delivery log.")
    async def delete_alert_rule(self, info: Info, id: strawberry.ID) -> AlertRuleDeleted:
        rule = await _admin_rule(info, id)
        assert rule.id is not None
        await alert_service.delete_alert_rule(sessions=info.context.sessions, rule_id=rule.id)
        return AlertRuleDeleted(id=strawberry.ID(str(rule.id)), deleted=True)
