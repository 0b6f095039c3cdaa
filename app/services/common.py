"""Small things every service module needs."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

Sessions = async_sessionmaker[AsyncSession]


def dialect_of(sessions: Sessions) -> str:
    """`sqlite` or `postgresql`: the few queries that differ (search, dates, JSON) ask."""
    bind = sessions.kw["bind"]
    return str(bind.dialect.name)
