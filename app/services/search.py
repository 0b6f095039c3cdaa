"""Full-text search over events: FTS5 on SQLite, a tsvector GIN index on PostgreSQL.

User input is reduced to words, all of them required: each a whole word, the last one
also as a prefix (search as you type: `checkout ref` finds "checkout refused"). No query
syntax of either engine reaches the database, so no input can make a query fail.

Only the last word is a prefix because a prefix query merges the entries of every indexed
word that starts with it: at a million events, `"request"* "4242"*` spent 25 ms in FTS5
where `"request" "4242"*` spends 0.2 ms.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from app.domain.event import EventIn
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


# SQLite: the writer adds each event's row to the FTS5 table itself (`sqlite_fts_row`);
# the delete trigger of migration 0003 removes it, computing the stack text in SQL.
SQLITE_FTS_INSERT = (
    "INSERT INTO event_fts(rowid, exception_type, exception_value, message, stack) "
    "VALUES (?, ?, ?, ?, ?)"
)


def sqlite_stack_text(event: EventIn) -> str | None:
    """The stack text FTS5 indexes for `event`: its raw stack text, else each frame's
    function, module and file name. It must equal what migration 0003's `_sqlite_stack`
    computes from the stored row, which the delete trigger hands to a contentless FTS5
    table to forget the row: a row is forgotten only with the values it was indexed by.
    Built here from the frames in memory, where SQL took them apart from the stored JSON
    (json_each, json_extract) at four-fifths of the cost of storing an event."""
    if event.raw_stacktrace is not None:
        return event.raw_stacktrace
    parts = [
        f"{frame.function or ''} {frame.module or ''} {frame.filename or ''}"
        for exception in event.exceptions
        for frame in exception.frames
    ]
    return " ".join(parts) if parts else None


def sqlite_fts_row(row_id: int, event: EventIn) -> tuple[Any, ...]:
    """The parameters of SQLITE_FTS_INSERT for the stored event `row_id`."""
    primary = event.primary_exception
    return (
        row_id,
        primary.type if primary else None,
        primary.value if primary else None,
        event.message,
        sqlite_stack_text(event),
    )


def search_words(text: str) -> list[str]:
    return WORD.findall(text)[:MAX_WORDS]


def event_search_clause(dialect: str, text: str) -> Any | None:
    """A WHERE clause on `event` for events matching `text`; None when it has no words."""
    words = search_words(text)
    if not words:
        return None
    *whole, last = words
    if dialect == "postgresql":
        query = " & ".join([*(word.lower() for word in whole), f"{last.lower()}:*"])
        return sa.text(f"{_PG_DOCUMENT} @@ to_tsquery('simple', :search_query)").bindparams(
            search_query=query
        )
    matching = sa.text("SELECT rowid FROM event_fts WHERE event_fts MATCH :search_query")
    return Event.id.in_(matching.bindparams(search_query=_fts_query(text)))  # type: ignore[union-attr]


def _fts_query(text: str) -> str | None:
    """The FTS5 query for `text`: whole words, the last also as a prefix."""
    words = search_words(text)
    if not words:
        return None
    *whole, last = words
    return " ".join([*(f'"{word}"' for word in whole), f'"{last}"*'])


# At most this many matches count as few (see `few_search_matches`).
FEW_MATCHES = 2000


async def few_search_matches(session: Any, dialect: str, text: str | None) -> list[int] | None:
    """The ids of the events `text` matches when they are few (SQLite only), else None.

    SQLite keeps no statistics, so for a newest-first page of a search it always walks the
    project's time index and tests each event against the full-text matches: quick when
    matches are many (the page fills at once), a walk over every event when they are few
    (75 ms at a million events for a word in 54 of them). Asking the index for up to
    FEW_MATCHES + 1 matches first costs little either way and tells the two apart; few
    matches are then looked up by id and sorted.
    """
    if dialect == "postgresql" or not text:
        return None
    clause = _fts_query(text)
    if clause is None:
        return None
    rows = await session.execute(
        sa.text("SELECT rowid FROM event_fts WHERE event_fts MATCH :q LIMIT :n"),
        {"q": clause, "n": FEW_MATCHES + 1},
    )
    ids = [row[0] for row in rows]
    return ids if len(ids) <= FEW_MATCHES else None
