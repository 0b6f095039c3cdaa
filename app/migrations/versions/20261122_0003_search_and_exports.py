"""Full-text search over events, and export requests.

SQLite: a contentless FTS5 table over the event's exception type and value, message and
stack (the raw stack text, or the parsed frames when the client sent structured frames),
kept in step by triggers; the text is not stored twice.
PostgreSQL: a GIN index on the same text as a `simple` tsvector; queries must use the
exact expression of `app.services.search` for the index to apply.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 08:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_SEARCH_EXPRESSION = (
    "to_tsvector('simple', coalesce(exception_type, '') || ' ' || coalesce(exception_value, '')"
    " || ' ' || coalesce(message, '') || ' ' || coalesce(raw_stacktrace, "
    "jsonb_path_query_array(exceptions, '$[*].frames[*].function')::text || ' ' || "
    "jsonb_path_query_array(exceptions, '$[*].frames[*].module')::text || ' ' || "
    "jsonb_path_query_array(exceptions, '$[*].frames[*].filename')::text, ''))"
)


def _sqlite_stack(row: str) -> str:
    """The stack text SQLite indexes: the raw text, else the frames' names and files."""
    return (
        f"coalesce({row}.raw_stacktrace, (SELECT group_concat("
        "coalesce(json_extract(f.value, '$.function'), '') || ' ' || "
        "coalesce(json_extract(f.value, '$.module'), '') || ' ' || "
        "coalesce(json_extract(f.value, '$.filename'), ''), ' ') "
        f"FROM json_each({row}.exceptions) AS e, json_each(e.value, '$.frames') AS f))"
    )


def upgrade() -> None:
    op.create_table(
        "export_request",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_ids", sa.JSON(), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE INDEX ix_event_search ON event USING gin ({PG_SEARCH_EXPRESSION})")
        return
    op.execute(
        "CREATE VIRTUAL TABLE event_fts USING fts5("
        "exception_type, exception_value, message, stack, content='', tokenize='unicode61')"
    )
    op.execute(
        "CREATE TRIGGER event_fts_insert AFTER INSERT ON event BEGIN "
        "INSERT INTO event_fts(rowid, exception_type, exception_value, message, stack) "
        "VALUES (new.id, new.exception_type, new.exception_value, new.message, "
        f"{_sqlite_stack('new')}); END"
    )
    # A contentless table forgets a row only when given the values it indexed.
    op.execute(
        "CREATE TRIGGER event_fts_delete AFTER DELETE ON event BEGIN "
        "INSERT INTO event_fts(event_fts, rowid, exception_type, exception_value, message, "
        "stack) VALUES ('delete', old.id, old.exception_type, old.exception_value, "
        f"old.message, {_sqlite_stack('old')}); END"
    )
    op.execute(
        "INSERT INTO event_fts(rowid, exception_type, exception_value, message, stack) "
        "SELECT id, exception_type, exception_value, message, "
        f"{_sqlite_stack('event')} FROM event"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_event_search")
    else:
        op.execute("DROP TRIGGER IF EXISTS event_fts_insert")
        op.execute("DROP TRIGGER IF EXISTS event_fts_delete")
        op.execute("DROP TABLE IF EXISTS event_fts")
    op.drop_table("export_request")
