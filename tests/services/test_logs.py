"""The ErrorStack log store: the last 10 messages per key, for at most one hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.errors import InvalidInput
from app.models import LogMessage
from app.services.keys import CreatedProject, create_project_key
from app.services.logs import (
    LOG_KEEP,
    append_log_message,
    project_log_messages,
    prune_log_messages,
    recent_log_messages,
)
from app.services.runtime import Runtime

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def stored_count(runtime: Runtime) -> int:
    async with runtime.database.sessions() as session:
        return int((await session.scalar(select(func.count()).select_from(LogMessage))) or 0)


async def log(runtime: Runtime, project: CreatedProject, text: str, at: datetime, **kw) -> None:
    key = kw.pop("key_id", project.ingest_key.key.id)
    await append_log_message(
        sessions=runtime.database.write_sessions,
        project_id=project.project.id,
        project_key_id=key,
        message=text,
        now=at,
        **kw,
    )


async def test_keeps_the_last_ten_per_key_oldest_first(runtime: Runtime, project: CreatedProject):
    for n in range(12):
        await log(runtime, project, f"m{n}", T0 + timedelta(seconds=n), level="info")
    now = T0 + timedelta(minutes=1)
    kept = await recent_log_messages(
        sessions=runtime.database.sessions, project_key_id=project.ingest_key.key.id, now=now
    )
    assert [row.message for row in kept] == [f"m{n}" for n in range(2, 12)]
    assert {row.level for row in kept} == {"info"}
    assert await stored_count(runtime) == LOG_KEEP


async def test_messages_older_than_an_hour_are_not_shown_and_are_pruned(
    runtime: Runtime, project: CreatedProject
):
    await log(runtime, project, "old", T0)
    await log(runtime, project, "newer", T0 + timedelta(minutes=30))
    sessions = runtime.database.sessions
    key_id = project.ingest_key.key.id

    at_59 = await recent_log_messages(
        sessions=sessions, project_key_id=key_id, now=T0 + timedelta(minutes=59)
    )
    assert [row.message for row in at_59] == ["old", "newer"]
    at_60 = await recent_log_messages(
        sessions=sessions, project_key_id=key_id, now=T0 + timedelta(minutes=60)
    )
    assert [row.message for row in at_60] == ["newer"]
    assert await stored_count(runtime) == 2

    await log(runtime, project, "latest", T0 + timedelta(minutes=61))
    assert await stored_count(runtime) == 2


async def test_project_listing_merges_keys(runtime: Runtime, project: CreatedProject):
    other = await create_project_key(
        sessions=runtime.database.sessions, project_id=project.project.id, scopes=["ingest"]
    )
    await log(runtime, project, "a", T0)
    await log(runtime, project, "b", T0 + timedelta(seconds=1), key_id=other.key.id)
    await log(runtime, project, "c", T0 + timedelta(seconds=2))
    rows = await project_log_messages(
        sessions=runtime.database.sessions,
        project_id=project.project.id,
        now=T0 + timedelta(minutes=5),
    )
    assert [row.message for row in rows] == ["a", "b", "c"]
    by_key = await recent_log_messages(
        sessions=runtime.database.sessions,
        project_key_id=other.key.id,
        now=T0 + timedelta(minutes=5),
    )
    assert [row.message for row in by_key] == ["b"]


async def test_prune_sweeps_every_key(runtime: Runtime, project: CreatedProject):
    await log(runtime, project, "stale", T0)
    await log(runtime, project, "fresh", T0 + timedelta(minutes=50))
    deleted = await prune_log_messages(
        sessions=runtime.database.write_sessions, now=T0 + timedelta(minutes=70)
    )
    assert deleted == 1
    assert await stored_count(runtime) == 1


async def test_long_text_is_cut_and_data_kept(runtime: Runtime, project: CreatedProject):
    await log(
        runtime, project, "x" * 10_000, T0, level="a-very-long-level-name", data={"lineno": "7"}
    )
    [row] = await recent_log_messages(
        sessions=runtime.database.sessions, project_id=project.project.id, now=T0
    )
    assert len(row.message) == 8192 and row.message.endswith("…[truncated]")
    assert row.level is not None and len(row.level) == 16
    assert row.data == {"lineno": "7"}


async def test_exactly_one_owner_must_be_named(runtime: Runtime):
    with pytest.raises(InvalidInput):
        await recent_log_messages(sessions=runtime.database.sessions)
    with pytest.raises(InvalidInput):
        await recent_log_messages(
            sessions=runtime.database.sessions, project_id=1, project_key_id=1
        )
