"""Full-text search over events: FTS5 on SQLite, a tsvector GIN index on PostgreSQL.

User input is reduced to words, each matched as a prefix, all of them required; no
query syntax of either engine reaches the database, so no input can make a query fail.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from app.models import Event

WORD = re.compile(r"\w+", re.UNICODE)
MAX_WORDS = 16

# Must stay identical to the indexed expression in migration 0003.
_PG_DOCUMENT = (
    "to_tsvector('simple', coalesce(event.exception_type, '') || ' ' || "
    "coalesce(event.exception_value, '') || ' ' || coalesce(event.message, '') || ' ' || "
    "coalesce(event.raw_stacktrace, "
    "jsonb_path_query_array(event.exceptions, '$[*].frames[*].function')::text || ' ' || "
    "jsonb_path_query_array(event.exceptions, '$[*].frames[*].module')::text || ' ' || "
    "jsonb_path_query_array(event.exceptions, '$[*].frames[*].filename')::text, ''))"
)


def search_words(text: str) -> list[str]:
    return WORD.findall(text)[:MAX_WORDS]


def event_search_clause(dialect: str, text: str) -> Any | None:
    """A WHERE clause on `event` for events matching `text`; None when it has no words."""
    words = search_words(text)
    if not words:
        return None
    if dialect == "postgresql":
        query = " & ".join(f"{word.lower()}:*" for word in words)
        return sa.text(f"{_PG_DOCUMENT} @@ to_tsquery('simple', :search_query)").bindparams(
            search_query=query
        )
    query = " ".join(f'"{word}"*' for word in words)
    matching = sa.text("SELECT rowid FROM event_fts WHERE event_fts MATCH :search_query")
    return Event.id.in_(matching.bindparams(search_query=query))  # type: ignore[union-attr]
