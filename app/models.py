"""The tables. This is the only module that declares them; services are the only code
that reads or writes them.

Timestamps are stored in UTC and always come back timezone-aware, on SQLite (which has
no zone type) as on PostgreSQL. JSON columns are JSONB on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A datetime column that stores UTC and returns aware datetimes on every backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # SQLite compares the stored text: keep one format, without an offset.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Texts of recent instants: a batch binds the same ones many times (its time of receipt in
# every event row, an event's timestamp in its row, its search row, its user's and its
# account's), and a lookup costs a twentieth of writing the text anew. Equal datetimes are
# the same instant, whose UTC text is one; the few naive ones are UTC (below) and never
# equal an aware one, so they keep their own entries.
_UTC_TEXTS: dict[datetime, str] = {}
_UTC_TEXTS_SIZE = 4096


def sqlite_utc_text(value: datetime | None) -> str | None:
    """What a UTCDateTime column binds on SQLite, SQLAlchemy's DATETIME text of the UTC
    time (`2026-12-04 17:05:09.000123`), written by `isoformat` in C: the batch writer
    binds several times per event, and the two processors' Python (a conversion, then a
    `%`-format of seven fields) were a tenth of its time."""
    if value is None:
        return None
    text = _UTC_TEXTS.get(value)
    if text is None:
        if len(_UTC_TEXTS) >= _UTC_TEXTS_SIZE:
            _UTC_TEXTS.clear()
        text = _UTC_TEXTS[value] = _utc_text(value)
    return text


def _utc_text(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    utc = value.astimezone(UTC).replace(tzinfo=None)
    text = utc.isoformat(" ")
    return text if utc.microsecond else text + ".000000"


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(*, nullable: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable))


def _json(*, nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(JSONType, nullable=nullable))


class GroupStatus(StrEnum):
    UNRESOLVED = "unresolved"
    RESOLVED = "resolved"
    IGNORED = "ignored"


class Project(SQLModel, table=True):
    __tablename__ = "project"

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=100, sa_column_kwargs={"unique": True}, nullable=False)
    name: str = Field(max_length=200)
    grouping_strategy: str = Field(default="frames", max_length=32)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )
    # Scrubbing: extra key names whose values are replaced with [Filtered], and whether
    # client IP addresses are dropped before storage.
    scrub_fields: list[str] | None = _json()
    scrub_ip_addresses: bool = Field(default=False)
    # Per-key ingest quotas (events); None uses the server's defaults.
    events_per_minute: int | None = Field(default=None)
    events_per_hour: int | None = Field(default=None)


class ProjectKey(SQLModel, table=True):
    """A key clients send. Only its SHA-256 is stored; `prefix` lets people tell keys apart."""

    __tablename__ = "project_key"

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(
        sa_column=sa.Column(
            sa.ForeignKey("project.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    label: str = Field(default="", max_length=200)
    prefix: str = Field(max_length=16)
    key_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True}, nullable=False)
    scopes: str = Field(max_length=100)  # comma-separated: ingest, read, write
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )
    revoked_at: datetime | None = _ts(nullable=True)


class ApiToken(SQLModel, table=True):
    """A token for the GraphQL API and management calls; `project_ids` None means all."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    label: str = Field(default="", max_length=200)
    prefix: str = Field(max_length=16)
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True}, nullable=False)
    scopes: str = Field(max_length=100)  # comma-separated: read, write, admin
    project_ids: list[int] | None = _json()
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )
    revoked_at: datetime | None = _ts(nullable=True)


class Group(SQLModel, table=True):
    """An issue: the events that share a fingerprint within a project."""

    __tablename__ = "error_group"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "fingerprint", name="uq_group_project_fingerprint"),
        sa.Index("ix_group_project_status_last_seen", "project_id", "status", "last_seen", "id"),
        sa.Index("ix_group_project_last_seen", "project_id", "last_seen", "id"),
        sa.Index("ix_group_project_first_seen", "project_id", "first_seen", "id"),
        sa.Index("ix_group_project_count", "project_id", "count", "id"),
        sa.Index("ix_group_project_user_count", "project_id", "user_count", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("project.id", ondelete="CASCADE"), nullable=False)
    )
    fingerprint: str = Field(max_length=64)
    grouping_strategy: str = Field(max_length=32)
    grouping_reason: str = Field(default="", max_length=1000)
    title: str = Field(max_length=1000)
    culprit: str | None = Field(default=None, max_length=1000)
    exception_type: str | None = Field(default=None, max_length=512)
    message: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    level: str = Field(max_length=16)
    platform: str | None = Field(default=None, max_length=200)
    status: str = Field(default=GroupStatus.UNRESOLVED, max_length=16)
    is_regression: bool = Field(default=False)
    count: int = Field(default=0)
    user_count: int = Field(default=0)
    account_count: int = Field(default=0)
    first_seen: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_seen: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    first_release: str | None = Field(default=None, max_length=200)
    last_release: str | None = Field(default=None, max_length=200)
    resolved_at: datetime | None = _ts(nullable=True)
    # "Resolved in next release": the release that was current when resolved; an event of
    # the same release does not reopen the group.
    resolved_in_release: str | None = Field(default=None, max_length=200)
    ignored_at: datetime | None = _ts(nullable=True)
    ignore_until: datetime | None = _ts(nullable=True)
    ignore_until_count: int | None = Field(default=None)
    ignore_until_user_count: int | None = Field(default=None)
    # Counts when ignored, so "until N more events / users" is measured from that moment.
    ignore_base_count: int | None = Field(default=None)
    ignore_base_user_count: int | None = Field(default=None)


class AffectedUser(SQLModel, table=True):
    """An end user of the client's application that errors hit."""

    __tablename__ = "affected_user"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "external_id", name="uq_user_project_external"),
        sa.Index("ix_user_project_last_seen", "project_id", "last_seen", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("project.id", ondelete="CASCADE"), nullable=False)
    )
    external_id: str = Field(max_length=200)
    email: str | None = Field(default=None, max_length=200)
    username: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    ip_address: str | None = Field(default=None, max_length=200)
    data: dict[str, Any] | None = _json()
    first_seen: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_seen: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    event_count: int = Field(default=0)


class Account(SQLModel, table=True):
    """A customer account (organisation) of a B2B client application."""

    __tablename__ = "account"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "external_id", name="uq_account_project_external"),
        sa.Index("ix_account_project_last_seen", "project_id", "last_seen", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("project.id", ondelete="CASCADE"), nullable=False)
    )
    external_id: str = Field(max_length=200)
    name: str | None = Field(default=None, max_length=200)
    data: dict[str, Any] | None = _json()
    first_seen: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_seen: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    event_count: int = Field(default=0)


class GroupUser(SQLModel, table=True):
    """Which users a group affected: exact, so "users affected by this issue" is a count."""

    __tablename__ = "group_user"
    __table_args__ = (sa.Index("ix_group_user_user", "user_id", "group_id"),)

    group_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("error_group.id", ondelete="CASCADE"), primary_key=True)
    )
    user_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("affected_user.id", ondelete="CASCADE"), primary_key=True)
    )
    first_seen: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_seen: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    event_count: int = Field(default=0)


class GroupAccount(SQLModel, table=True):
    __tablename__ = "group_account"
    __table_args__ = (sa.Index("ix_group_account_account", "account_id", "group_id"),)

    group_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("error_group.id", ondelete="CASCADE"), primary_key=True)
    )
    account_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("account.id", ondelete="CASCADE"), primary_key=True)
    )
    first_seen: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_seen: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    event_count: int = Field(default=0)


class Event(SQLModel, table=True):
    """One occurrence. `event_id` is the client's id (unique per project, so a resend is
    stored once); `id` is ours."""

    __tablename__ = "event"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "event_id", name="uq_event_project_event_id"),
        sa.Index("ix_event_group_timestamp", "group_id", "timestamp", "id"),
        sa.Index("ix_event_project_timestamp", "project_id", "timestamp", "id"),
        sa.Index("ix_event_project_received", "project_id", "received_at"),
        sa.Index("ix_event_user", "affected_user_id", "timestamp"),
        sa.Index("ix_event_account", "account_id", "timestamp"),
    )

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("project.id", ondelete="CASCADE"), nullable=False)
    )
    group_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("error_group.id", ondelete="CASCADE"), nullable=False)
    )
    event_id: str = Field(max_length=128)
    timestamp: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    received_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    type: str = Field(max_length=16)
    level: str = Field(max_length=16)
    platform: str | None = Field(default=None, max_length=200)
    logger: str | None = Field(default=None, max_length=200)
    environment: str | None = Field(default=None, max_length=200)
    release: str | None = Field(default=None, max_length=200)
    server_name: str | None = Field(default=None, max_length=200)
    transaction: str | None = Field(default=None, max_length=512)
    message: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    exception_type: str | None = Field(default=None, max_length=512)
    exception_value: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    # The chain, root cause first, each with its parsed frames (outermost first).
    exceptions: list[dict[str, Any]] | None = _json()
    raw_stacktrace: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    url: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    user_agent: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    request: dict[str, Any] | None = _json()
    user: dict[str, Any] | None = _json()
    affected_user_id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.ForeignKey("affected_user.id", ondelete="SET NULL"), nullable=True),
    )
    account: dict[str, Any] | None = _json()
    account_id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.ForeignKey("account.id", ondelete="SET NULL"), nullable=True),
    )
    session_id: str | None = Field(default=None, max_length=200)
    window_id: str | None = Field(default=None, max_length=200)
    breadcrumbs: list[dict[str, Any]] | None = _json()
    tags: dict[str, str] | None = _json()
    extra: dict[str, Any] | None = _json()
    contexts: dict[str, Any] | None = _json()
    fingerprint: list[str] | None = _json()
    dialect: str = Field(max_length=32)
    client_ip: str | None = Field(default=None, max_length=64)


class RetentionPolicy(SQLModel, table=True):
    """How long a project's events are kept. A row with no project is the server default."""

    __tablename__ = "retention_policy"

    id: int | None = Field(default=None, primary_key=True)
    project_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.ForeignKey("project.id", ondelete="CASCADE"), nullable=True, unique=True
        ),
    )
    days: int = Field(default=90)
    auto_export_before_cleanup: bool = Field(default=False)
    export_destination: str | None = Field(default=None, max_length=1000)
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )


class ClientReport(SQLModel, table=True):
    """Events an SDK dropped before sending (Sentry client reports), per reason and category."""

    __tablename__ = "client_report"
    __table_args__ = (sa.Index("ix_client_report_project_time", "project_id", "timestamp"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("project.id", ondelete="CASCADE"), nullable=False)
    )
    timestamp: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    received_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    reason: str = Field(max_length=100)
    category: str = Field(max_length=100)
    quantity: int = Field(default=0)


class LogMessage(SQLModel, table=True):
    """The ErrorStack dialect's short-lived log: the last few messages per key, for an hour."""

    __tablename__ = "log_message"
    __table_args__ = (sa.Index("ix_log_message_key_created", "project_key_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("project.id", ondelete="CASCADE"), nullable=False)
    )
    project_key_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("project_key.id", ondelete="CASCADE"), nullable=False)
    )
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    level: str | None = Field(default=None, max_length=16)
    message: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    data: dict[str, Any] | None = _json()


class SourceMap(SQLModel, table=True):
    """An uploaded source map for one minified file of one release."""

    __tablename__ = "source_map"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "release", "url", name="uq_source_map_release_url"),
    )

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("project.id", ondelete="CASCADE"), nullable=False)
    )
    release: str = Field(max_length=200)
    # The minified file's URL or name, as frames will name it.
    url: str = Field(max_length=1000)
    name: str = Field(default="", max_length=1000)
    content: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    size: int = Field(default=0)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )


class ExportRequest(SQLModel, table=True):
    """A requested export of events, downloadable at `/export/{id}` by a credential that
    can read what it covers. The rows are read when downloaded, streamed."""

    __tablename__ = "export_request"

    id: str = Field(primary_key=True, max_length=32)
    # The projects the export covers (the requester's visible projects when none was named).
    project_ids: list[int] | None = _json()
    project_id: int | None = Field(default=None)
    group_id: int | None = Field(default=None)
    since: datetime | None = _ts(nullable=True)
    until: datetime | None = _ts(nullable=True)
    format: str = Field(max_length=8)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )
    expires_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class AlertRule(SQLModel, table=True):
    """When to tell someone (trigger) and how (channel), per project.

    `trigger`: new_issue | regression | frequency (with `threshold` events in
    `window_minutes` for one issue). `channel`: email | postmark | webhook | slack, with
    `target` the address list or URL and `options` anything channel-specific.
    """

    __tablename__ = "alert_rule"

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(
        sa_column=sa.Column(
            sa.ForeignKey("project.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    name: str = Field(default="", max_length=200)
    trigger: str = Field(max_length=32)
    threshold: int | None = Field(default=None)
    window_minutes: int | None = Field(default=None)
    channel: str = Field(max_length=32)
    target: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    options: dict[str, Any] | None = _json()
    enabled: bool = Field(default=True)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )


class AlertDelivery(SQLModel, table=True):
    """One notification: what it was about, where it went, and whether it got there.

    `dedupe_key` (rule, trigger, group, and for frequency alerts the window) is unique, so
    a retry or a second process never sends the same alert twice.
    """

    __tablename__ = "alert_delivery"
    __table_args__ = (
        sa.UniqueConstraint("dedupe_key", name="uq_alert_delivery_dedupe"),
        sa.Index("ix_alert_delivery_rule_created", "rule_id", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rule_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("alert_rule.id", ondelete="CASCADE"), nullable=False)
    )
    group_id: int | None = Field(default=None)
    dedupe_key: str = Field(max_length=300)
    kind: str = Field(max_length=32)
    status: str = Field(default="pending", max_length=16)  # pending | sent | failed | digested
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(UTCDateTime(), nullable=False)
    )
    sent_at: datetime | None = _ts(nullable=True)


class RetentionRun(SQLModel, table=True):
    """One run of the cleanup task: what it exported and deleted, or why it failed."""

    __tablename__ = "retention_run"
    __table_args__ = (sa.Index("ix_retention_run_started", "started_at"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int | None = Field(default=None)
    started_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    finished_at: datetime | None = _ts(nullable=True)
    status: str = Field(default="running", max_length=16)  # running | ok | failed
    events_deleted: int = Field(default=0)
    groups_deleted: int = Field(default=0)
    exported_to: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
