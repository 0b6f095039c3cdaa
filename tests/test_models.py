"""The tables' column types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from app.models import UTCDateTime, sqlite_utc_text


@pytest.mark.parametrize(
    "value",
    [
        None,
        datetime(2026, 12, 4, 17, 5, 9, 123, tzinfo=UTC),
        datetime(2026, 12, 4, 17, 5, 9, tzinfo=UTC),  # no microseconds
        datetime(2026, 12, 4, 23, 30, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        datetime(2026, 12, 4, 1, 2, 3, 999_999),  # naive: taken as UTC
        datetime(1, 1, 1, 0, 0, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
    ],
)
def test_the_writers_sqlite_time_text_is_sqlalchemys(value: datetime | None) -> None:
    """The batch writer binds times with `sqlite_utc_text`, everything else through
    SQLAlchemy: one text per instant either way, or SQLite's text comparisons (first and
    last seen, retention, keyset pages) would order them wrongly."""
    dialect = sqlite.dialect()
    column = UTCDateTime()
    through_sqlalchemy = column.dialect_impl(dialect).bind_processor(dialect)
    assert through_sqlalchemy is not None
    assert sqlite_utc_text(value) == through_sqlalchemy(value)
