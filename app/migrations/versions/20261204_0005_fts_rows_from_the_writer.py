"""SQLite: the batch writer adds events to the FTS5 table, not an insert trigger.

The trigger took each new event's frames apart from its stored JSON (json_each and
json_extract over every frame) to build the stack text: four-fifths of what SQLite spent
storing an event. The writer has the frames in memory and inserts the same text itself
(`app.services.search.sqlite_fts_row`); the delete trigger stays as it is.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 17:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migration 0003's stack text of the new row, for the downgrade.
_NEW_STACK = (
    "coalesce(new.raw_stacktrace, (SELECT group_concat("
    "coalesce(json_extract(f.value, '$.function'), '') || ' ' || "
    "coalesce(json_extract(f.value, '$.module'), '') || ' ' || "
    "coalesce(json_extract(f.value, '$.filename'), ''), ' ') "
    "FROM json_each(new.exceptions) AS e, json_each(e.value, '$.frames') AS f))"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS event_fts_insert")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER event_fts_insert AFTER INSERT ON event BEGIN "
            "INSERT INTO event_fts(rowid, exception_type, exception_value, message, stack) "
            "VALUES (new.id, new.exception_type, new.exception_value, new.message, "
            f"{_NEW_STACK}); END"
        )
