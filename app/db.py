"""The database: one async engine per process, short sessions, migrations on start.

SQLite is set up the way a single-file database must be for a server: WAL (readers do
not block the writer), a busy timeout (a second process waits instead of failing),
foreign keys on, and write transactions that start with `BEGIN IMMEDIATE` so the writer
takes the lock up front instead of failing on upgrade from a read lock. PostgreSQL runs
the same code through asyncpg.

On a SQLite file the batch writer has an engine of its own, on the standard driver: it
runs each batch's whole transaction in one call to a worker thread (see
`app.services.ingest.BatchWriter`), where the async driver made every statement a round
trip through the event loop.

Every other statement on SQLite goes through aiosqlite, which runs the connection in a
thread of its own. SQLAlchemy's adapter made four trips to that thread and back through
the event loop for each statement (open a cursor, execute, fetch, close); `OneTripCursor`
makes one, running the four in the thread. A read session (`BEGIN`, the query, the
rollback) went from ~1.45 ms to ~0.8 ms; a GraphQL request opens about three.

On PostgreSQL it has a small engine of its own too, whose connections are not pinged
before each use: the ping (`BEGIN`, `;`, `ROLLBACK`) added three round trips to every
batch, which count most where the database is across a network. A batch that meets a dead
connection (the server restarted, a proxy dropped it) is written again on a new one; the
pool of every other session still pings, since a read cannot be tried again that simply.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import orjson
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.config import Settings

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# At most one checkpoint per this many seconds (see `Checkpointer`).
CHECKPOINT_INTERVAL = 0.5
# A WAL longer than this after a passive checkpoint (pages; 64 MiB at SQLite's 4 KiB) is
# truncated, holding the writer off meanwhile (see `Checkpointer`).
WAL_LIMIT_PAGES = 16_384
# How long that truncation waits for the writer's transaction and for readers to end
# before it gives up until the next checkpoint: the writer waits as long.
WAL_TRUNCATE_WAIT_MS = 250
# Any fixed number works: it only has to be the same in every errorgraph process.
MIGRATION_LOCK_ID = 0x6572726F72
# The newest migration (app/migrations/versions); a test keeps it Alembic's head. A process
# whose database is there already (every worker of `errorgraph serve`, which migrates
# before it starts them) never imports Alembic, which held ~9 MiB in every process.
SCHEMA_REVISION = "0005"


@dataclass(frozen=True)
class Database:
    """The engine and the two session factories services use.

    `sessions` is for reads and ordinary writes; `write_sessions` begins with
    `BEGIN IMMEDIATE` on SQLite. `sync_writer` (a SQLite file only) is the batch writer's
    engine on the standard driver, its transactions `BEGIN IMMEDIATE` too; `batch_engine`
    (PostgreSQL only) is the batch writer's, without a ping before each use. Without
    either the batch writer uses `write_sessions`.
    """

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    write_sessions: async_sessionmaker[AsyncSession]
    sync_writer: Engine | None = None
    batch_engine: AsyncEngine | None = None
    checkpointer: Checkpointer | None = None
    writer_turns: WriterTurns | None = None

    def wrote(self) -> None:
        """Called by the batch writer after each commit on `sync_writer`."""
        if self.checkpointer is not None:
            self.checkpointer.poke()

    async def dispose(self) -> None:
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.close)
        await self.engine.dispose()
        if self.batch_engine is not None:
            await self.batch_engine.dispose()
        if self.sync_writer is not None:
            self.sync_writer.dispose()
        if self.writer_turns is not None:
            self.writer_turns.close()


class Checkpointer:
    """Copies the batch writer's WAL into the database file from a thread of its own.

    SQLite checkpoints, by default, inside the commit that crosses 1,000 WAL pages: the
    writer then copies some 4 MiB and waits for fsync while every request of its batch
    waits too (a seventh of the writer's time with Sentry-sized events). The writer's
    connection turns that off and pokes this thread after each commit; the thread runs
    a PASSIVE checkpoint (it never blocks the writer or readers) at most every
    CHECKPOINT_INTERVAL seconds, in SQLite's C code, which leaves the GIL free for the
    server. Other connections keep the automatic checkpoint. On close, a last checkpoint.

    A passive checkpoint copies what was committed when it started, but SQLite starts the
    WAL over only when a write begins with all of it copied and no reader in it. Under a
    steady load the writer commits while every checkpoint runs, so that never happened:
    the WAL grew for as long as the load lasted (11 GB in six minutes of bulk ingest).
    When the WAL is longer than `limit` pages after a passive checkpoint, a TRUNCATE
    checkpoint follows, in a turn of the batch writers (`turns`, which every batch writer
    on the file takes for each transaction: SQLite's own busy wait lost the lock to a
    writer that never pauses, every time): it copies the rest (what was written since the
    passive one) and empties the file while the writers wait for their turn. It waits at
    most WAL_TRUNCATE_WAIT_MS for other writers and for readers, and gives up until the
    next checkpoint if they do not end by then.
    """

    def __init__(
        self,
        path: Path,
        *,
        turns: WriterTurns | None = None,
        interval: float = CHECKPOINT_INTERVAL,
        limit: int = WAL_LIMIT_PAGES,
    ) -> None:
        self._path = path
        self._turns = turns
        self._interval = interval
        self._limit = limit
        self._wanted = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="errorgraph-checkpointer", daemon=True
        )
        self._thread.start()

    def poke(self) -> None:
        self._wanted.set()

    def close(self) -> None:
        self._closed.set()
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        connection = sqlite3.connect(
            self._path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        try:
            while True:
                self._wanted.wait()
                self._closed.wait(self._interval)  # cut short by close()
                self._wanted.clear()
                self._checkpoint(connection)
                if self._closed.is_set():
                    return
        finally:
            connection.close()

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        try:
            _, pages, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if pages <= self._limit:
                return
            connection.execute(f"PRAGMA busy_timeout = {WAL_TRUNCATE_WAIT_MS}")
            try:
                with self._turns or contextlib.nullcontext():
                    query = "PRAGMA wal_checkpoint(TRUNCATE)"
                    busy, _, _ = connection.execute(query).fetchone()
            finally:
                connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if busy:
                log.info("WAL of %d pages not truncated: a reader or the writer held on", pages)
        except sqlite3.Error:
            # Locked: the next poke tries again; the WAL only grows meanwhile.
            log.warning("WAL checkpoint failed", exc_info=True)


class WriterTurns:
    """Hands the write lock of a SQLite file from one process's batch writer to the next
    as soon as it is free.

    SQLite makes a writer that finds the file locked sleep and retry, up to 100 ms at a
    time: with two processes on one file their writers took turns badly (two processes
    gained a tenth over one, and p99 latency tripled). Each batch writer instead waits
    for its turn on an advisory lock of a file beside the database (`<db>-writer.lock`),
    which the kernel hands to the next waiter the moment it is released and releases
    itself when a process dies; the writer then finds SQLite's lock free. Writes outside
    the batch writer (mutations, settings) still go through SQLite's busy wait.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + "-writer.lock")
        self._fd: int | None = None
        # The kernel's lock is per open file: threads of one process sharing it would not
        # exclude each other, so they take turns here first.
        self._threads = threading.Lock()

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _enable_wal(path: Path) -> None:
    """Switch the file to WAL once (the mode is stored in the file).

    Changing the journal mode needs an exclusive lock and SQLite does not wait for it even
    with a busy timeout, so several processes starting on a new file retry here.
    """
    for attempt in range(100):
        connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() == "wal":
                return
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
        finally:
            connection.close()
        time.sleep(0.05)


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor of SQLAlchemy's aiosqlite adapter whose statements each take one trip to
    the connection's thread: there a standard cursor executes, fetches every row (as the
    adapter did) and closes, and the rows come back with the description, row count and
    last row id. Server-side cursors (streaming results) keep the adapter's own class.

    It queues its work with `aiosqlite.Connection._execute`, which aiosqlite's own cursors
    use; SQLAlchemy's adapter reaches into aiosqlite as far (`_tx`, `_conn`).
    """

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No aiosqlite cursor to open (the adapter's __init__ took a trip for one).
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized: Any = {}
        self._rows: collections.deque[Any] = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1  # the standard cursor's: what fetchmany() takes by default

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        def run(cursor: sqlite3.Cursor) -> tuple[Any, list[Any], int, int | None]:
            if parameters is None:
                cursor.execute(operation)
            else:
                cursor.execute(operation, parameters)
            description = cursor.description
            rows = cursor.fetchall() if description else []
            return description, rows, cursor.rowcount, cursor.lastrowid

        self._description, rows, self._rowcount, self._lastrowid = await self._in_thread(run)
        self._rows = collections.deque(rows)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        def run(cursor: sqlite3.Cursor) -> tuple[int, int | None]:
            cursor.executemany(operation, seq_of_parameters)
            return cursor.rowcount, cursor.lastrowid

        self._rowcount, self._lastrowid = await self._in_thread(run)
        self._description = None
        self._rows.clear()

    async def _in_thread(self, work: Any) -> Any:
        """`work(cursor)` on a standard cursor, opened and closed in the connection's
        thread, one statement at a time on the connection as the adapter does."""
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]

        def run() -> Any:
            # `_conn` is read in the thread: it raises there, as aiosqlite's cursors do,
            # for a connection already closed.
            cursor = connection._conn.cursor()
            try:
                return work(cursor)
            finally:
                cursor.close()

        async with self._adapt_connection._execute_mutex:
            return await connection._execute(run)


class _OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor

    def rollback(self) -> None:
        # The pool rolls back every connection it takes back, after the session already
        # has. sqlite3's rollback does nothing outside a transaction; asking here whether
        # one is open (a flag of the connection, read without a trip) saves the trip.
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        if connection._connection is not None and not connection.in_transaction:
            return
        super().rollback()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite module, handing out connections with `OneTripCursor`s;
    given to the engine as its `module`."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        adapted = super().connect(*arg, **kw)
        return _OneTripConnection(self, adapted._connection)


def _json_dumps(value: Any) -> str:
    """JSON columns through orjson: the standard encoder was a tenth of the batch
    writer's time. Non-string keys (a client's numeric tag names) become strings, as the
    standard encoder made them."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# Passed to every engine, so that reads and writes agree on the encoding.
JSON_OPTIONS: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def create_database(settings: Settings) -> Database:
    """Build the engine for `settings`, creating the SQLite file's folder when needed."""
    kwargs: dict[str, Any] = dict(JSON_OPTIONS)
    if settings.is_sqlite:
        path = settings.sqlite_path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _enable_wal(path)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if make_url(settings.database_url).get_driver_name() == "aiosqlite":
            kwargs["module"] = OneTripDBAPI(aiosqlite, sqlite3)
    else:
        kwargs["pool_pre_ping"] = True
        kwargs["pool_size"] = 10
        kwargs["max_overflow"] = 20
    engine = create_async_engine(settings.database_url, **kwargs)
    batch_engine = None
    if not settings.is_sqlite:
        # A connection for each batch transaction the writer keeps in flight.
        batch_engine = create_async_engine(
            settings.database_url,
            **JSON_OPTIONS,
            pool_size=settings.writer_transactions,
            max_overflow=0,
        )
    sync_writer = None
    checkpointer = None
    writer_turns = None
    if settings.is_sqlite:
        _install_sqlite_pragmas(engine.sync_engine)
        write_engine = engine.execution_options(sqlite_begin="IMMEDIATE")
        if settings.sqlite_path is not None:
            sync_writer = create_engine(
                make_url(settings.database_url).set(drivername="sqlite+pysqlite"),
                # One connection, used by one worker thread at a time (the writer's).
                pool_size=1,
                **JSON_OPTIONS,
                max_overflow=0,
                connect_args={
                    "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                    "check_same_thread": False,
                },
            )
            _install_sqlite_pragmas(sync_writer)
            writer_turns = WriterTurns(settings.sqlite_path)
            checkpointer = Checkpointer(settings.sqlite_path, turns=writer_turns)

            @event.listens_for(sync_writer, "connect")
            def no_auto_checkpoint(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

    else:
        write_engine = engine
    return Database(
        engine=engine,
        sessions=async_sessionmaker(engine, expire_on_commit=False),
        write_sessions=async_sessionmaker(write_engine, expire_on_commit=False),
        sync_writer=sync_writer,
        batch_engine=batch_engine,
        checkpointer=checkpointer,
        writer_turns=writer_turns,
    )


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config pointing at the migrations shipped inside the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("app") / "migrations"))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


async def upgrade_database(database: Database) -> None:
    """Bring the schema to the newest migration; safe when several processes start at once."""

    def run(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        if schema_revision(connection) == SCHEMA_REVISION:
            return
        from alembic import command

        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    engine = database.engine
    if engine.dialect.name == "sqlite":
        engine = engine.execution_options(sqlite_begin="IMMEDIATE")  # type: ignore[assignment]
    async with engine.begin() as connection:
        await connection.run_sync(run)


def schema_revision(connection: Connection) -> str | None:
    """The migration the database was brought to; None before the first."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


async def database_ok(database: Database, *, seconds: float = 5.0) -> str | None:
    """None when the database answers, else the reason it does not."""
    try:
        async with asyncio.timeout(seconds), database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except TimeoutError:
        return f"database did not answer within {seconds:g}s"
    except Exception as exc:
        return f"database unavailable: {type(exc).__name__}: {exc}"[:500]
    return None
