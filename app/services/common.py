"""Small things every service module needs."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

Sessions = async_sessionmaker[AsyncSession]

# The largest value an id or counter column holds: they are INTEGER, 32 bits on
# PostgreSQL, which refuses to bind a larger number even to compare it. A number from a
# client beyond this names no row.
MAX_INT_COLUMN = 2**31 - 1


def dialect_of(sessions: Sessions) -> str:
    """`sqlite` or `postgresql`: the few queries that differ (search, dates, JSON) ask."""
    bind = sessions.kw["bind"]
    return str(bind.dialect.name)
