"""The database: migrations on start, SQLite set up for a server, and the same code on a
real PostgreSQL server (ERRORGRAPH_TEST_POSTGRES_URL)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError
from support import T0, make_event

from app.config import Settings
from app.db import (
    SCHEMA_REVISION,
    Checkpointer,
    WriterTurns,
    alembic_config,
    create_database,
    upgrade_database,
)
from app.domain.event import EventIn, ExceptionIn, Frame, UserIn
from app.models import AffectedUser, Event, Group
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


async def test_a_statement_on_sqlite_is_one_trip_to_the_connections_thread(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """Each trip to aiosqlite's thread and back through the event loop costs ~80 µs; the
    adapter's cursors took four per statement."""
    import aiosqlite

    database = create_database(settings)
    try:
        await upgrade_database(database)
        trips = 0
        execute = aiosqlite.Connection._execute

        async def counted(self: aiosqlite.Connection, fn: object, *args: object) -> object:
            nonlocal trips
            trips += 1
            return await execute(self, fn, *args)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        async with database.sessions() as session:  # the pool's connection, once made
            await session.execute(text("SELECT 1"))
        trips = 0
        async with database.sessions() as session:
            assert (await session.execute(text("SELECT 41 + 1"))).scalar() == 42
        assert trips == 3  # BEGIN, the query, ROLLBACK (not again when the pool takes it back)

        # What else SQLAlchemy asks of a cursor: row counts, last row ids, many rows
        # fetched a few at a time, many parameter sets, errors as the DBAPI's own.
        async with database.engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
            inserted = await conn.exec_driver_sql("INSERT INTO t (v) VALUES ('a')")
            assert (inserted.lastrowid, inserted.rowcount) == (1, 1)
            await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": "b"}, {"v": "c"}])
            updated = await conn.exec_driver_sql("UPDATE t SET v = v || '!' WHERE id > 1")
            assert updated.rowcount == 2
            result = await conn.exec_driver_sql("SELECT v FROM t ORDER BY id")
            assert [row.v for row in result.fetchmany(2)] == ["a", "b!"]
            assert [row.v for row in result.fetchmany()] == ["c!"]
            assert result.fetchmany() == []
            with pytest.raises(IntegrityError):
                async with conn.begin_nested():
                    await conn.exec_driver_sql("INSERT INTO t (v) VALUES ('a')")
            streamed = await conn.stream(text("SELECT v FROM t ORDER BY id"))
            assert [row.v async for row in streamed] == ["a", "b!", "c!"]
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


def test_the_schema_revision_is_alembics_head():
    """`SCHEMA_REVISION` says when a database needs no migration: a new migration without
    it would leave every database that was at the old head unmigrated."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head == SCHEMA_REVISION


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


@pytest.mark.postgres
async def test_postgres_concurrent_batches_take_locks_in_one_order(postgres_settings: Settings):
    """Batches naming the same users and groups in opposite orders, written at once by
    four writers (as four processes would): none waits for another that waits for it
    (PostgreSQL would abort one as a deadlock, and its caller would get an error); every
    count is exact."""
    settings = postgres_settings.model_copy(update={"writer_max_batch": 10})
    runtimes = await asyncio.gather(*(Runtime.start(settings) for _ in range(4)))
    try:
        first = runtimes[0]
        project = (await create_project(sessions=first.database.sessions, name="pg")).project
        await ingest_events(  # the groups and users exist: the batches update them
            writer=first.writer,
            project=project,
            events=[make_event(n, user=f"u{n}") for n in range(10)],
        )
        batches = [
            [make_event(n, user=f"u{n}") for n in (range(10) if i % 2 else range(9, -1, -1))]
            for i in range(40)
        ]
        results = await asyncio.gather(
            *(
                ingest_events(writer=runtimes[i % 4].writer, project=project, events=batch)
                for i, batch in enumerate(batches)
            ),
            return_exceptions=True,
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert all(r.status == "existing" for answer in results for r in answer)  # type: ignore[union-attr]
        async with first.database.sessions() as session:
            groups = (await session.scalars(select(Group))).all()
            assert sorted(g.count for g in groups) == [41] * 10
            assert all(g.user_count == 1 for g in groups)
            users = (await session.scalars(select(AffectedUser))).all()
            assert sorted(u.event_count for u in users) == [41] * 10
    finally:
        for rt in runtimes:
            await rt.stop()


@pytest.mark.postgres
@pytest.mark.parametrize("transactions", [2, 1])
async def test_postgres_writer_commits_a_batch_while_another_waits(
    postgres_settings: Settings, transactions: int
):
    """With two transactions in flight (the default), a batch whose group another
    connection holds locked waits, and the next batch, of another group, is written and
    answered meanwhile; with one, the next batch waits behind it. Once the lock is
    released the first batch is written too."""
    settings = postgres_settings.model_copy(update={"writer_transactions": transactions})
    runtime = await Runtime.start(settings)
    try:
        project = (await create_project(sessions=runtime.database.sessions, name="pg")).project
        [held, _] = await ingest_events(
            writer=runtime.writer, project=project, events=[make_event(1), make_event(2)]
        )
        async with runtime.database.engine.connect() as blocker:
            await blocker.execute(
                select(Group.id).where(Group.id == held.group_id).with_for_update()
            )
            waiting = asyncio.create_task(
                ingest_events(writer=runtime.writer, project=project, events=[make_event(1)])
            )
            await asyncio.sleep(0.3)
            assert not waiting.done()
            other = asyncio.create_task(
                ingest_events(writer=runtime.writer, project=project, events=[make_event(2)])
            )
            await asyncio.wait({other}, timeout=5)
            assert other.done() is (transactions == 2)
            assert not waiting.done()
            await blocker.rollback()
        [first] = await asyncio.wait_for(waiting, 10)
        [second] = await asyncio.wait_for(other, 10)
        assert (first.status, second.status) == ("existing", "existing")
        async with runtime.database.sessions() as session:
            counts = (await session.scalars(select(Group.count))).all()
        assert sorted(counts) == [2, 2]
    finally:
        await runtime.stop()


@pytest.mark.postgres
async def test_postgres_ingest_and_reads_go_on_after_the_server_drops_every_connection(
    postgres_settings: Settings, postgres_url: str
):
    """PostgreSQL restarted, or a proxy dropped idle connections: every pooled connection
    is dead. The next batch is still written and answered (the writer's connections are
    not pinged before each use: it writes the batch again on a new one), and the next
    read is answered (the pool of the other sessions pings each connection first)."""
    import asyncpg

    runtime = await Runtime.start(postgres_settings)
    try:
        project = (await create_project(sessions=runtime.database.sessions, name="pg")).project
        await ingest_events(writer=runtime.writer, project=project, events=[make_event(1)])
        async with runtime.database.sessions() as session:
            assert (await session.scalars(select(Group.count))).all() == [1]

        admin = await asyncpg.connect(postgres_url)
        try:
            dropped = await admin.fetch(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert len(dropped) >= 2  # the writer's connection and the reads'
            pids = [row["pid"] for row in dropped]
            deadline = time.monotonic() + 10
            while await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            ):
                assert time.monotonic() < deadline, "the backends did not exit"
                await asyncio.sleep(0.05)
        finally:
            await admin.close()

        [again] = await ingest_events(
            writer=runtime.writer, project=project, events=[make_event(1)]
        )
        assert again.status == "existing"
        async with runtime.database.sessions() as session:
            assert (await session.scalars(select(Group.count))).all() == [2]
            assert len((await session.scalars(select(Event.id))).all()) == 2
    finally:
        await runtime.stop()


async def test_the_batch_writer_takes_the_write_lock_up_front_on_its_own_engine(
    runtime: Runtime, project: CreatedProject
):
    """On a SQLite file the writer's transactions run on `sync_writer` (one thread call
    per batch), each one `BEGIN IMMEDIATE`, as the async engine's write sessions do."""
    writer = runtime.database.sync_writer
    assert writer is not None
    statements: list[str] = []
    # What the driver runs (the writer sends its inserts to the cursor directly).
    sa_event.listen(
        writer,
        "checkout",
        lambda dbapi_connection, *_a: dbapi_connection.set_trace_callback(statements.append),
    )
    await ingest_events(writer=runtime.writer, project=project.project, events=[make_event(1)])
    assert statements[0] == "BEGIN IMMEDIATE"
    assert any(sql.startswith("INSERT INTO event ") for sql in statements)


async def test_a_batch_writer_waits_for_its_turn_on_the_lock_beside_the_file(
    runtime: Runtime, project: CreatedProject
):
    """Batch writers of processes sharing one SQLite file take turns on an advisory lock
    of `<db>-writer.lock`: while another holder (a second open of the file, as another
    process has) keeps it, the writer stores nothing and answers nobody; once it is
    released, the batch is written."""
    turns = runtime.database.writer_turns
    path = runtime.settings.sqlite_path
    assert turns is not None and path is not None
    assert turns.path == path.with_name(path.name + "-writer.lock")
    other = os.open(turns.path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        written = asyncio.create_task(
            ingest_events(writer=runtime.writer, project=project.project, events=[make_event(1)])
        )
        await asyncio.sleep(0.3)
        assert not written.done()
        async with runtime.database.sessions() as session:
            assert (await session.execute(select(Event))).first() is None
        fcntl.flock(other, fcntl.LOCK_UN)
        [result] = await asyncio.wait_for(written, 10)
        assert result.status == "created"
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # given back after the commit
    finally:
        os.close(other)


def _fill_with_autocheckpoint_off(path: Path, rows: int = 400) -> sqlite3.Connection:
    """Rows written with the automatic checkpoint off, the connection left open (the
    last connection to close checkpoints on its own)."""
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("CREATE TABLE IF NOT EXISTS blob (data TEXT)")
    with connection:
        connection.executemany("INSERT INTO blob VALUES (?)", [("x" * 2000,)] * rows)
    return connection


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def test_the_checkpointer_copies_the_wal_into_the_file_after_a_poke(tmp_path: Path):
    """With the automatic checkpoint off (as on the writer's connection) the rows stay in
    the WAL until the checkpointer's thread, poked, copies them into the database file."""
    path = tmp_path / "x.db"
    connection = _fill_with_autocheckpoint_off(path)
    assert path.stat().st_size < 100_000  # everything is still in the WAL
    checkpointer = Checkpointer(path, interval=0.01)
    try:
        await asyncio.sleep(0.2)
        assert path.stat().st_size < 100_000, "no checkpoint without a poke"
        checkpointer.poke()
        assert await _until(lambda: path.stat().st_size > 400 * 2000)
    finally:
        checkpointer.close()
        connection.close()


async def test_the_checkpointer_checkpoints_once_more_when_closed(tmp_path: Path):
    path = tmp_path / "x.db"
    checkpointer = Checkpointer(path, interval=3600)
    connection = _fill_with_autocheckpoint_off(path)
    assert path.stat().st_size < 100_000
    checkpointer.poke()  # would wait an hour before checkpointing
    await asyncio.sleep(0.1)  # the thread is in that wait now
    await asyncio.to_thread(checkpointer.close)
    assert path.stat().st_size > 400 * 2000
    connection.close()


async def test_the_checkpointer_empties_a_wal_longer_than_its_limit(tmp_path: Path):
    """Past `limit` pages the WAL is copied and emptied, not only copied: a passive
    checkpoint leaves the file as long as it was."""
    path = tmp_path / "x.db"
    wal = tmp_path / "x.db-wal"
    connection = _fill_with_autocheckpoint_off(path)  # ~200 pages
    checkpointer = Checkpointer(path, interval=0.01, limit=50)
    try:
        checkpointer.poke()
        assert await _until(lambda: wal.stat().st_size == 0)
        assert path.stat().st_size > 400 * 2000
        assert connection.execute("SELECT count(*) FROM blob").fetchone() == (400,)
    finally:
        checkpointer.close()
        connection.close()


async def test_the_checkpointer_leaves_a_short_wal_to_be_reused(tmp_path: Path):
    path = tmp_path / "x.db"
    wal = tmp_path / "x.db-wal"
    connection = _fill_with_autocheckpoint_off(path)
    checkpointer = Checkpointer(path, interval=0.01, limit=10_000)
    try:
        checkpointer.poke()
        assert await _until(lambda: path.stat().st_size > 400 * 2000)
        assert wal.stat().st_size > 400 * 2000  # copied, not emptied
    finally:
        checkpointer.close()
        connection.close()


def test_the_wal_stays_short_while_a_writer_never_stops(tmp_path: Path):
    """A writer that commits without a pause, as the batch writer does under a steady
    load: every passive checkpoint runs while it writes, so SQLite never starts the WAL
    over, and it used to grow with everything written. The checkpointer's truncation
    keeps it near its limit."""
    path = tmp_path / "x.db"
    wal = tmp_path / "x.db-wal"
    connection = _fill_with_autocheckpoint_off(path, rows=1)
    turns = WriterTurns(path)
    checkpointer = Checkpointer(path, turns=turns, interval=0.005, limit=256)  # 1 MiB
    longest = 0
    try:
        for _ in range(300):  # 300 transactions of 100 KB: 30 MB written
            with turns, connection:  # as the batch writer takes its turns
                connection.executemany("INSERT INTO blob VALUES (?)", [("y" * 2000,)] * 50)
            checkpointer.poke()
            longest = max(longest, wal.stat().st_size)
            time.sleep(0.0005)  # the batch writer goes back to the event loop for its next
    finally:
        checkpointer.close()
        turns.close()
    assert connection.execute("SELECT count(*) FROM blob").fetchone() == (15_001,)
    connection.close()
    assert longest < 12_000_000, f"the WAL reached {longest:,} bytes"


async def test_the_batch_writer_leaves_checkpoints_to_the_checkpointer(
    runtime: Runtime, project: CreatedProject
):
    """The writer's own connection never checkpoints (it would copy the WAL inside a
    batch's commit); after its commits the checkpointer does."""
    writer = runtime.database.sync_writer
    assert writer is not None and runtime.database.checkpointer is not None
    with writer.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    path = runtime.settings.sqlite_path
    assert path is not None
    before = path.stat().st_size
    events = [make_event(n, message="x" * 4000) for n in range(200)]
    await ingest_events(writer=runtime.writer, project=project.project, events=events)
    assert await _until(lambda: path.stat().st_size > before + 200 * 4000)


async def test_the_writer_stores_times_in_the_one_text_format(
    runtime: Runtime, project: CreatedProject
):
    """The writer sends its statements to SQLite's driver itself: times must be stored as
    SQLAlchemy stores them everywhere else (SQLite compares the text), on insert and on
    the updates that move first and last seen."""
    early, late = T0 - timedelta(days=1), T0 + timedelta(days=1)
    for at in (T0, early, late):  # the same group and user, each time older or newer
        await ingest_events(
            writer=runtime.writer,
            project=project.project,
            events=[make_event(1, at=at, user="u1")],
        )
    path = runtime.settings.sqlite_path
    assert path is not None
    connection = sqlite3.connect(path)
    try:
        stored = [
            *connection.execute("SELECT timestamp, received_at FROM event").fetchall(),
            *connection.execute("SELECT first_seen, last_seen FROM error_group").fetchall(),
            *connection.execute("SELECT first_seen, last_seen FROM affected_user").fetchall(),
            *connection.execute("SELECT first_seen, last_seen FROM group_user").fetchall(),
        ]
        group = connection.execute("SELECT first_seen, last_seen FROM error_group").fetchone()
    finally:
        connection.close()
    text_format = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?$")
    assert stored and all(text_format.match(value) for row in stored for value in row), stored
    assert group == (
        early.strftime("%Y-%m-%d %H:%M:%S.%f"),
        late.strftime("%Y-%m-%d %H:%M:%S.%f"),
    )
