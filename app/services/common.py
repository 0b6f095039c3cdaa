"""Small things every service module needs."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

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


T = TypeVar("T")


class PerDatabase(Generic[T]):
    """One `T` per database, found by its session factory: the in-process caches of the
    services (keys, source maps, alert rules) belong to one database, so that two apps in
    one process (tests) never see each other's entries, and go with it."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._items: weakref.WeakKeyDictionary[Sessions, T] = weakref.WeakKeyDictionary()

    def __call__(self, sessions: Sessions) -> T:
        item = self._items.get(sessions)
        if item is None:
            item = self._items[sessions] = self._factory()
        return item
