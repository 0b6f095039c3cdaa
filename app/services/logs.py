"""The short-lived log of the ErrorStack dialect (`../shared/seeds/004_e47735d2315acd96.txt`):
"Only the last 10 log messages are kept for a maximum of 1 hour."

Messages are kept per project key (the ErrorStack "stack key"). Every append prunes that
key's messages, so storage stays bounded without a background sweeper; every read also
filters by age and count, so a message past its hour is never shown even when no append
has come since to delete it. `prune_log_messages` is the sweep a retention job may run
over every key (keys that stopped logging keep their last messages until it does).

The clock is a parameter (`now`) so that tests move time instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.scrubbing import ScrubRules, scrub_data, scrub_text
from app.errors import InvalidInput
from app.models import LogMessage, utcnow

Sessions = async_sessionmaker[AsyncSession]

LOG_KEEP = 10
LOG_MAX_AGE = timedelta(hours=1)
MESSAGE_LIMIT = 8192
LEVEL_LIMIT = 16
TRUNCATION_MARKER = "…[truncated]"

LOGS = LogMessage.__table__


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def _oldest_kept(now: datetime) -> datetime:
    """Messages created at or before this instant are past their hour."""
    return now - LOG_MAX_AGE


def _newest_per_key(rows: Sequence[LogMessage]) -> list[LogMessage]:
    """The last `LOG_KEEP` of each key, oldest first (rows come oldest first)."""
    kept: dict[int, list[LogMessage]] = {}
    for row in rows:
        kept.setdefault(row.project_key_id, []).append(row)
    selected = [row for per_key in kept.values() for row in per_key[-LOG_KEEP:]]
    return sorted(selected, key=lambda row: (row.created_at, row.id or 0))


async def _prune_key(session: AsyncSession, *, project_key_id: int, now: datetime) -> int:
    newest = (
        select(LOGS.c.id)
        .where(LOGS.c.project_key_id == project_key_id)
        .order_by(LOGS.c.created_at.desc(), LOGS.c.id.desc())
        .limit(LOG_KEEP)
        .scalar_subquery()
    )
    result = await session.execute(
        sa.delete(LOGS).where(
            LOGS.c.project_key_id == project_key_id,
            sa.or_(LOGS.c.created_at <= _oldest_kept(now), LOGS.c.id.not_in(newest)),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def append_log_message(
    *,
    sessions: Sessions,
    project_id: int,
    project_key_id: int,
    message: str,
    level: str | None = None,
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
    scrub: ScrubRules | None = None,
) -> LogMessage:
    """Keep `message` for the key, then drop what the key may no longer keep.

    The caller has checked that the key belongs to the project (a key grant). Long
    messages and levels are cut and marked, as events are. Secrets in the message and
    data are filtered as in events, by the project's rules `scrub` (else the defaults).
    On SQLite pass the write session factory, so the transaction takes the write lock
    up front.
    """
    if not isinstance(message, str):
        raise InvalidInput("a log message must be text", field="message")
    rules = scrub or ScrubRules()
    message = scrub_text(message, rules)
    data = scrub_data(data, rules) if data else data
    now = now or utcnow()
    row = LogMessage(
        project_id=project_id,
        project_key_id=project_key_id,
        created_at=now,
        level=_cut(level, LEVEL_LIMIT) if level else None,
        message=_cut(message, MESSAGE_LIMIT),
        data=data or None,
    )
    async with sessions.begin() as session:
        session.add(row)
        await session.flush()
        await _prune_key(session, project_key_id=project_key_id, now=now)
    return row


async def recent_log_messages(
    *,
    sessions: Sessions,
    project_key_id: int | None = None,
    project_id: int | None = None,
    now: datetime | None = None,
) -> list[LogMessage]:
    """The kept messages of one key, or of every key of one project, oldest first:
    at most `LOG_KEEP` per key, none older than `LOG_MAX_AGE`."""
    if (project_key_id is None) == (project_id is None):
        raise InvalidInput("give exactly one of project_key_id and project_id", field="project")
    query = select(LogMessage).where(
        LogMessage.created_at > _oldest_kept(now or utcnow())  # type: ignore[operator]
    )
    if project_key_id is not None:
        query = query.where(LogMessage.project_key_id == project_key_id)
    else:
        query = query.where(LogMessage.project_id == project_id)
    query = query.order_by(LogMessage.created_at, LogMessage.id)  # type: ignore[arg-type]
    async with sessions() as session:
        rows = (await session.scalars(query)).all()
    return _newest_per_key(rows)


async def project_log_messages(
    *, sessions: Sessions, project_id: int, now: datetime | None = None
) -> list[LogMessage]:
    """What a project's log shows (the GraphQL `logs(projectId)`): every key's kept
    messages, oldest first."""
    return await recent_log_messages(sessions=sessions, project_id=project_id, now=now)


async def prune_log_messages(*, sessions: Sessions, now: datetime | None = None) -> int:
    """Delete every message that is past its hour or beyond the last `LOG_KEEP` of its
    key; returns how many were deleted."""
    now = now or utcnow()
    deleted = 0
    async with sessions.begin() as session:
        result = await session.execute(
            sa.delete(LOGS).where(LOGS.c.created_at <= _oldest_kept(now))
        )
        deleted += int(getattr(result, "rowcount", 0) or 0)
        crowded = (
            await session.execute(
                select(LOGS.c.project_key_id)
                .group_by(LOGS.c.project_key_id)
                .having(sa.func.count() > LOG_KEEP)
            )
        ).scalars()
        for project_key_id in list(crowded):
            deleted += await _prune_key(session, project_key_id=project_key_id, now=now)
    return deleted
