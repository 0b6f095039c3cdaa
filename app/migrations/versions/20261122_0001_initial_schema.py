"""Initial schema: projects, keys, tokens, groups, events, users, accounts, retention.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 07:42:14.251616
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=100), nullable=False),
        sa.Column(
            "project_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "project",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("grouping_strategy", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("slug"),
    )
    op.create_table(
        "account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "external_id", name="uq_account_project_external"),
    )
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.create_index(
            "ix_account_project_last_seen", ["project_id", "last_seen", "id"], unique=False
        )

    op.create_table(
        "affected_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=200), nullable=True),
        sa.Column("username", sa.String(length=200), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("ip_address", sa.String(length=200), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "external_id", name="uq_user_project_external"),
    )
    with op.batch_alter_table("affected_user", schema=None) as batch_op:
        batch_op.create_index(
            "ix_user_project_last_seen", ["project_id", "last_seen", "id"], unique=False
        )

    op.create_table(
        "error_group",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("grouping_strategy", sa.String(length=32), nullable=False),
        sa.Column("grouping_reason", sa.String(length=1000), nullable=False),
        sa.Column("title", sa.String(length=1000), nullable=False),
        sa.Column("culprit", sa.String(length=1000), nullable=True),
        sa.Column("exception_type", sa.String(length=512), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("platform", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("is_regression", sa.Boolean(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("user_count", sa.Integer(), nullable=False),
        sa.Column("account_count", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_release", sa.String(length=200), nullable=True),
        sa.Column("last_release", sa.String(length=200), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_in_release", sa.String(length=200), nullable=True),
        sa.Column("ignored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ignore_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ignore_until_count", sa.Integer(), nullable=True),
        sa.Column("ignore_until_user_count", sa.Integer(), nullable=True),
        sa.Column("ignore_base_count", sa.Integer(), nullable=True),
        sa.Column("ignore_base_user_count", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "fingerprint", name="uq_group_project_fingerprint"),
    )
    with op.batch_alter_table("error_group", schema=None) as batch_op:
        batch_op.create_index("ix_group_project_count", ["project_id", "count", "id"], unique=False)
        batch_op.create_index(
            "ix_group_project_first_seen", ["project_id", "first_seen", "id"], unique=False
        )
        batch_op.create_index(
            "ix_group_project_last_seen", ["project_id", "last_seen", "id"], unique=False
        )
        batch_op.create_index(
            "ix_group_project_status_last_seen",
            ["project_id", "status", "last_seen", "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_group_project_user_count", ["project_id", "user_count", "id"], unique=False
        )

    op.create_table(
        "project_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    with op.batch_alter_table("project_key", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_project_key_project_id"), ["project_id"], unique=False)

    op.create_table(
        "retention_policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("auto_export_before_cleanup", sa.Boolean(), nullable=False),
        sa.Column("export_destination", sa.String(length=1000), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id"),
    )
    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("platform", sa.String(length=200), nullable=True),
        sa.Column("logger", sa.String(length=200), nullable=True),
        sa.Column("environment", sa.String(length=200), nullable=True),
        sa.Column("release", sa.String(length=200), nullable=True),
        sa.Column("server_name", sa.String(length=200), nullable=True),
        sa.Column("transaction", sa.String(length=512), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("exception_type", sa.String(length=512), nullable=True),
        sa.Column("exception_value", sa.Text(), nullable=True),
        sa.Column(
            "exceptions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("raw_stacktrace", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column(
            "request",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "user",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("affected_user_id", sa.Integer(), nullable=True),
        sa.Column(
            "account",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("session_id", sa.String(length=200), nullable=True),
        sa.Column("window_id", sa.String(length=200), nullable=True),
        sa.Column(
            "breadcrumbs",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "tags",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "extra",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "contexts",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "fingerprint",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("dialect", sa.String(length=32), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["affected_user_id"], ["affected_user.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["group_id"], ["error_group.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "event_id", name="uq_event_project_event_id"),
    )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.create_index("ix_event_account", ["account_id", "timestamp"], unique=False)
        batch_op.create_index(
            "ix_event_group_timestamp", ["group_id", "timestamp", "id"], unique=False
        )
        batch_op.create_index(
            "ix_event_project_received", ["project_id", "received_at"], unique=False
        )
        batch_op.create_index(
            "ix_event_project_timestamp", ["project_id", "timestamp", "id"], unique=False
        )
        batch_op.create_index("ix_event_user", ["affected_user_id", "timestamp"], unique=False)

    op.create_table(
        "group_account",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["group_id"], ["error_group.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("group_id", "account_id"),
    )
    with op.batch_alter_table("group_account", schema=None) as batch_op:
        batch_op.create_index("ix_group_account_account", ["account_id", "group_id"], unique=False)

    op.create_table(
        "group_user",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["error_group.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["affected_user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("group_id", "user_id"),
    )
    with op.batch_alter_table("group_user", schema=None) as batch_op:
        batch_op.create_index("ix_group_user_user", ["user_id", "group_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("group_user", schema=None) as batch_op:
        batch_op.drop_index("ix_group_user_user")

    op.drop_table("group_user")
    with op.batch_alter_table("group_account", schema=None) as batch_op:
        batch_op.drop_index("ix_group_account_account")

    op.drop_table("group_account")
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_user")
        batch_op.drop_index("ix_event_project_timestamp")
        batch_op.drop_index("ix_event_project_received")
        batch_op.drop_index("ix_event_group_timestamp")
        batch_op.drop_index("ix_event_account")

    op.drop_table("event")
    op.drop_table("retention_policy")
    with op.batch_alter_table("project_key", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_project_key_project_id"))

    op.drop_table("project_key")
    with op.batch_alter_table("error_group", schema=None) as batch_op:
        batch_op.drop_index("ix_group_project_user_count")
        batch_op.drop_index("ix_group_project_status_last_seen")
        batch_op.drop_index("ix_group_project_last_seen")
        batch_op.drop_index("ix_group_project_first_seen")
        batch_op.drop_index("ix_group_project_count")

    op.drop_table("error_group")
    with op.batch_alter_table("affected_user", schema=None) as batch_op:
        batch_op.drop_index("ix_user_project_last_seen")

    op.drop_table("affected_user")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_index("ix_account_project_last_seen")

    op.drop_table("account")
    op.drop_table("project")
    op.drop_table("api_token")
