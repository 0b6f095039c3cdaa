"""The database: migrations on start, SQLite set up for a server, and the same code on a
real PostgreSQL server (ERRORGRAPH_TEST_POSTGRES_URL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import inspect, select, text
from support import make_event

from app.config import Settings
from app.db import create_database, upgrade_database
from app.domain.event import EventIn, ExceptionIn, Frame, UserIn
from app.models import Event, Group
from app.services.ingest import ingest_events
from app.services.issues import resolve_group
from app.services.keys import CreatedProject, create_project, grant_for_project_key
from app.services.runtime import Runtime

EXPECTED_TABLES = {
    "project",
    "project_key",
    "api_token",
    "error_group",
    "event",
    "affected_user",
    "account",
    "group_user",
    "group_account",
    "retention_policy",
    "client_report",
    "log_message",
    "source_map",
    "export_request",
    "alert_rule",
    "alert_delivery",
    "retention_run",
    "alembic_version",
}


async def test_sqlite_is_set_up_for_a_server(settings: Settings):
    database = create_database(settings)
    try:
        await upgrade_database(database)
        async with database.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 30000
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            indexes = await conn.run_sync(
                lambda c: {i["name"] for i in inspect(c).get_indexes("error_group")}
            )
        assert tables >= EXPECTED_TABLES
        assert {"ix_group_project_status_last_seen", "ix_group_project_count"} <= indexes
        # Upgrading again is a no-op.
        await upgrade_database(database)
    finally:
        await database.dispose()


async def test_folder_is_created(tmp_path: Path):
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/a/b/eg.db",
        _env_file=None,  # type: ignore[call-arg]
    )
    runtime = await Runtime.start(settings)
    await runtime.stop()
    assert (tmp_path / "a" / "b" / "eg.db").exists()


async def test_two_processes_worth_of_starts_upgrade_once(settings: Settings):
    # Several workers start at once against one file: all succeed.
    runtimes = await asyncio.gather(*(Runtime.start(settings) for _ in range(3)))
    for runtime in runtimes:
        await runtime.stop()


@pytest.fixture
def postgres_settings(postgres_url: str) -> Settings:
    return Settings(database_url=postgres_url, _env_file=None)  # type: ignore[call-arg]


@pytest.mark.postgres
async def test_postgres_migrate_and_ingest(postgres_settings: Settings):
    runtimes = await asyncio.gather(*(Runtime.start(postgres_settings) for _ in range(2)))
    runtime, other = runtimes
    try:
        async with runtime.database.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert tables >= EXPECTED_TABLES

        created = await create_project(sessions=runtime.database.sessions, name="pg")
        grant = await grant_for_project_key(
            sessions=runtime.database.sessions, secret=created.ingest_key.secret
        )

        def event(i: int) -> EventIn:
            return EventIn(
                exceptions=[
                    ExceptionIn(
                        type="ValueError",
                        value=f"bad {i}",
                        frames=[Frame(module="shop.cart", function=f"f{i % 3}", in_app=True)],
                    )
                ],
                user=UserIn(id=f"user{i % 4}"),
                release="1.0",
            )

        # Two writers (as two processes would have) writing the same groups at once.
        results = await asyncio.gather(
            *(
                ingest_events(
                    writer=(runtime if i % 2 else other).writer,
                    project=grant.project,
                    events=[event(i)],
                )
                for i in range(60)
            )
        )
        group_ids = {r[0].group_id for r in results}
        assert len(group_ids) == 3
        async with runtime.database.sessions() as session:
            groups = (await session.scalars(select(Group))).all()
            assert sorted(g.count for g in groups) == [20, 20, 20]
            assert all(g.user_count == 4 for g in groups)
            assert len((await session.scalars(select(Event))).all()) == 60

        some = results[0][0].group_id
        await resolve_group(sessions=runtime.database.sessions, group_id=some)
        [again] = await ingest_events(writer=other.writer, project=grant.project, events=[event(0)])
        assert (again.group_id, again.regression) == (some, True)
        [dup] = await ingest_events(
            writer=runtime.writer,
            project=grant.project,
            events=[EventIn(event_id=results[0][0].event_id, message="x", type="message")],
        )
        assert dup.status == "duplicate"
        # NUL characters, which PostgreSQL refuses in text and JSON, are removed on the way in.
        [nul] = await ingest_events(
            writer=runtime.writer,
            project=grant.project,
            events=[EventIn(message="a\x00b", type="message", extra={"k": "v\x00"})],
        )
        async with runtime.database.sessions() as session:
            stored = await session.get(Event, nul.id)
            assert stored is not None and (stored.message, stored.extra) == ("ab", {"k": "v"})
    finally:
        for rt in runtimes:
            await rt.stop()


async def test_the_batch_writer_takes_the_write_lock_up_front_on_its_own_engine(
    runtime: Runtime, project: CreatedProject
):
    """On a SQLite file the writer's transactions run on `sync_writer` (one thread call
    per batch), each one `BEGIN IMMEDIATE`, as the async engine's write sessions do."""
    writer = runtime.database.sync_writer
    assert writer is not None
    statements: list[str] = []
    sa_event.listen(
        writer, "before_cursor_execute", lambda _c, _cur, sql, *_a: statements.append(sql)
    )
    await ingest_events(writer=runtime.writer, project=project.project, events=[make_event(1)])
    assert statements[0] == "BEGIN IMMEDIATE"
    assert any(sql.startswith("INSERT INTO event ") for sql in statements)
