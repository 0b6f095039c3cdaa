"""The one ingest path: canonical events in, one committed batch, a result per event.

Every dialect hands `EventIn` objects to `ingest_events`. Each event is normalised
(frames parsed from raw stack text) and fingerprinted in the caller's task, then queued
for the `BatchWriter`, a single task that takes whatever callers are waiting (up to a
bounded number of events, waiting at most a bounded time for more) and writes them in ONE
transaction: users and accounts upserted, groups upserted (counts, last seen, releases,
regressions, ignore conditions), events inserted, link tables updated. Only after the
commit are the callers answered and the ids published. This group commit is what lets
one SQLite file take thousands of events a second, and it is also correct with several
processes on PostgreSQL: counters are incremented in SQL, new rows are inserted with
ON CONFLICT DO NOTHING and looked up again, and groups are locked (FOR UPDATE) while
their status is decided.

A repeated client `event_id` is stored once; the repeat is answered as a duplicate of
the stored event.

On PostgreSQL the writer keeps up to `transactions` batches in flight, and the
transactions of several processes run at once. Each writes its new rows and its events
first and only then locks the rows other transactions update too (users', accounts' and
groups' counters, the links), so that the next batch's events are written while the
previous batch holds those locks through its commit (which waits for the server's WAL
flush). The locks are taken table by table in one order (users, accounts, groups, then
links) and, within a table, in key order, so that none waits for another that waits for
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from app import metrics
from app.db import Database, WriterTurns
from app.domain.event import EventIn, EventType, ExceptionIn
from app.domain.grouping import Grouping, grouping_for_event, title_and_culprit
from app.domain.scrubbing import ScrubRules, scrub_event
from app.domain.sourcemap import LoadedSourceMap, resolve_event
from app.domain.stacktrace import parse_stacktrace
from app.errors import InvalidInput, Unavailable
from app.models import (
    Account,
    AffectedUser,
    Event,
    Group,
    GroupAccount,
    GroupStatus,
    GroupUser,
    Project,
    UTCDateTime,
    sqlite_utc_text,
    utcnow,
)
from app.pubsub import EVENT_CAPTURED, GROUP_CREATED, GROUP_UPDATED, PubSub
from app.services.quotas import Quotas
from app.services.search import SQLITE_FTS_INSERT, sqlite_fts_row
from app.services.sourcemaps import source_maps_for_events

log = logging.getLogger(__name__)

EVENTS = Event.__table__
GROUPS = Group.__table__
USERS = AffectedUser.__table__
ACCOUNTS = Account.__table__
GROUP_USERS = GroupUser.__table__
GROUP_ACCOUNTS = GroupAccount.__table__

# Rows per multi-row statement: well under SQLite's bound-parameter limit.
CHUNK = 200

Clock = Callable[[], datetime]
Outcome = Literal["created", "existing", "duplicate"]


@dataclass(frozen=True)
class IngestResult:
    """What happened to one event: `created` when its group is new, `existing` when it
    joined a stored group, `duplicate` when its event_id was already stored (then `id`
    is the stored event's); `regression` when it reopened a resolved group."""

    event_id: str
    status: Outcome
    id: int
    group_id: int
    project_id: int
    regression: bool = False


@dataclass(frozen=True)
class PreparedEvent:
    """An event ready for the writer: normalised, fingerprinted, summarised."""

    event: EventIn
    grouping: Grouping
    title: str
    culprit: str | None


def prepare_event(
    event: EventIn,
    *,
    strategy: str,
    project_id: int,
    project_name: str | None = None,
    source_maps: dict[str, LoadedSourceMap] | None = None,
) -> PreparedEvent:
    """Parse raw stack text into frames when the client sent only text, resolve minified
    frames through `source_maps` (keyed by frame file, see `source_maps_for_events`),
    then fingerprint.

    When the client named the exception type or value itself, those win over what the
    text says; unknown stack formats keep the raw text and group by message. The
    `location` strategy hashes `project_name` (the Error Tracker keys issues on it).
    """
    if event.raw_stacktrace and not any(exc.frames for exc in event.exceptions):
        parsed = parse_stacktrace(event.raw_stacktrace)
        if parsed:
            given = event.primary_exception
            if given is not None:
                primary = parsed[-1]
                parsed[-1] = primary.model_copy(
                    update={
                        "type": given.type or primary.type,
                        "value": given.value or primary.value,
                        "module": given.module or primary.module,
                        "mechanism": given.mechanism or primary.mechanism,
                    }
                )
            event = event.model_copy(update={"exceptions": parsed})
    if source_maps:
        # Before grouping: a new minified build of the same code must not be a new issue.
        event = resolve_event(event, source_maps)
    if event.type is EventType.EXCEPTION and not event.exceptions and not event.message:
        raise InvalidInput("an exception event needs an exception or a message", field="exception")
    grouping = grouping_for_event(
        event, strategy=strategy, project_id=project_id, project_name=project_name
    )
    title, culprit = title_and_culprit(event)
    return PreparedEvent(event=event, grouping=grouping, title=title, culprit=culprit)


async def ingest_events(
    *,
    writer: BatchWriter,
    project: Project,
    events: Sequence[EventIn],
    key_id: int | None = None,
) -> list[IngestResult]:
    """Store `events` for `project`; returns only after they are committed.

    Each event is scrubbed of secrets (per the project's settings) before anything else
    sees it, then the quota of the project key `key_id` sent them with (None: sent
    without a key) is charged: past it, QuotaExceeded and nothing is stored.
    """
    assert project.id is not None
    prepared = await prepare_events(writer=writer, project=project, events=events, key_id=key_id)
    results = await writer.submit(project_id=project.id, events=prepared)
    metrics.count_accepted(event.dialect for event in events)
    return results


async def prepare_events(
    *,
    writer: BatchWriter,
    project: Project,
    events: Sequence[EventIn],
    key_id: int | None = None,
) -> list[PreparedEvent]:
    """What `ingest_events` does before it hands the events to the writer: scrub, resolve
    source maps, fingerprint, charge the quota. Apart for the bulk loader, which must hand
    its batches to the writer in order (the lookups here may wait, and reorder them)."""
    assert project.id is not None
    rules = ScrubRules.for_project(project.scrub_fields, project.scrub_ip_addresses)
    scrubbed = [scrub_event(event, rules) for event in events]
    source_maps = await source_maps_for_events(
        sessions=writer._database.sessions, project_id=project.id, events=scrubbed
    )
    prepared = [
        prepare_event(
            event,
            strategy=project.grouping_strategy,
            project_id=project.id,
            project_name=project.name,
            source_maps=maps,
        )
        for event, maps in zip(scrubbed, source_maps, strict=True)
    ]
    if writer.quotas is not None:
        await writer.quotas.check_events(project=project, key_id=key_id, count=len(prepared))
    return prepared


@dataclass
class _Pending:
    project_id: int
    events: list[PreparedEvent]
    future: asyncio.Future[list[IngestResult]]


@dataclass
class _Seen:
    """Aggregate of one user, account, group or link over a batch."""

    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def add(self, when: datetime, attrs: dict[str, Any] | None = None) -> None:
        self.count += 1
        if self.first is None or when < self.first:
            self.first = when
        if self.last is None or when >= self.last:
            self.last = when
            if attrs:
                self.attrs.update({k: v for k, v in attrs.items() if v is not None})
        elif attrs:
            for key, value in attrs.items():
                self.attrs.setdefault(key, value)


@cache
def _insert_ignoring_conflicts(dialect: str, table: sa.Table, *returning: str) -> Any:
    """INSERT … ON CONFLICT DO NOTHING RETURNING `returning` in `dialect`, built once.

    Executed with the rows as parameters (`_run(conn, stmt, rows)`), never with
    `.values(rows)`: a `.values(list)` statement has no cache key and was compiled anew
    for every batch (a sixth of the writer's time at one event per batch).
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing().returning(*(table.c[name] for name in returning))


@dataclass(frozen=True)
class _DriverStatement:
    """A write statement compiled once, with what turns a row of parameters into the
    driver's positional values."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]
    literals: tuple[tuple[int, Any], ...]
    returning: bool

    def values(self, row: dict[str, Any]) -> list[Any]:
        values = [row.get(name) for name in self.names]
        for index, value in self.literals:
            values[index] = value
        for index, process in self.processors:
            values[index] = process(values[index])
        return values


_DRIVER_STATEMENTS: dict[tuple[Any, tuple[str, ...]], _DriverStatement | None] = {}


def _driver_statement(
    conn: Connection, stmt: Any, keys: tuple[str, ...]
) -> _DriverStatement | None:
    """`stmt` compiled for SQLite's driver with the parameters `keys`; None when the
    statement needs what only SQLAlchemy's execution does (column defaults to compute)."""
    cache_key = (stmt, keys)
    if cache_key in _DRIVER_STATEMENTS:
        return _DRIVER_STATEMENTS[cache_key]
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
    prepared = None
    if not (compiled.insert_prefetch or compiled.update_prefetch) and compiled.positiontup:
        names = tuple(compiled.positiontup)
        # A name may be bound more than once (`_earlier`'s comparison and its result),
        # once typed and once not: the typed one decides, as in SQLAlchemy's execution.
        types: dict[str, Any] = {}
        for bind, name in compiled.bind_names.items():
            if not isinstance(bind.type, sa.types.NullType):
                types.setdefault(name, bind.type)
        processors = []
        literals = []
        for index, name in enumerate(names):
            if name not in keys:
                literals.append((index, compiled.binds[name].effective_value))
            if name in types:
                process = (
                    sqlite_utc_text
                    if isinstance(types[name], UTCDateTime)
                    else types[name].dialect_impl(dialect).bind_processor(dialect)
                )
                if process is not None:
                    processors.append((index, process))
        prepared = _DriverStatement(
            sql=compiled.string,
            names=names,
            processors=tuple(processors),
            literals=tuple(literals),
            returning=bool(compiled.effective_returning),
        )
    if len(_DRIVER_STATEMENTS) > 256:  # only the writer's few statements belong here
        _DRIVER_STATEMENTS.clear()
    _DRIVER_STATEMENTS[cache_key] = prepared
    return prepared


def _run(conn: Connection, stmt: Any, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Execute the write `stmt` once per row of `rows`; the rows it returns.

    On SQLite the statement goes straight to the driver's cursor, compiled once: through
    SQLAlchemy's execution every row cost more Python than SQLite took to store it (most
    of the writer's time), and SQLite, in process, gains nothing from multi-row
    statements. Elsewhere (PostgreSQL, where rows are sent together) SQLAlchemy runs it.
    """
    if not rows:
        return []
    if conn.dialect.name == "sqlite":
        prepared = _driver_statement(conn, stmt, tuple(rows[0]))
        if prepared is not None:
            cursor = conn.connection.cursor()
            try:
                if not prepared.returning:
                    cursor.executemany(prepared.sql, [prepared.values(row) for row in rows])
                    return []
                out: list[tuple[Any, ...]] = []
                for row in rows:
                    cursor.execute(prepared.sql, prepared.values(row))
                    out.extend(cursor.fetchall())
                return out
            finally:
                cursor.close()
    result = conn.execute(stmt, list(rows))
    return [tuple(row) for row in result] if result.returns_rows else []


@dataclass(frozen=True)
class _DriverLookup:
    """A lookup of rows by key compiled once for SQLite's driver, with the columns'
    result processors (dates, booleans)."""

    sql: str
    processors: tuple[Callable[[Any], Any] | None, ...]


@lru_cache(maxsize=64)  # a few statements per engine's dialect
def _driver_lookup(
    dialect: sa.Dialect, table: sa.Table, key: str, columns: tuple[str, ...]
) -> _DriverLookup:
    preparer = dialect.identifier_preparer
    selected = ", ".join(preparer.quote(name) for name in columns)
    sql = (
        f"SELECT {selected} FROM {preparer.format_table(table)} "
        f"WHERE project_id = ? AND {preparer.quote(key)} IN (SELECT value FROM json_each(?))"
    )
    processors = tuple(
        table.c[name].type.dialect_impl(dialect).result_processor(dialect, None) for name in columns
    )
    return _DriverLookup(sql=sql, processors=processors)


def _lookup(
    conn: Connection,
    table: sa.Table,
    project_id: int,
    key: str,
    values: Sequence[str],
    columns: tuple[str, ...],
    query: Callable[[], Any],
) -> Iterable[Sequence[Any]]:
    """The rows of `table` in `project_id` whose `key` is one of `values`: `columns` of
    each, in no particular order.

    On SQLite straight through the driver, the values as one JSON array: SQLAlchemy's
    execution of the writer's three lookups a batch (stored duplicates, people, groups:
    the statement's cache key, the expanded `IN` list's parameters, the rows' processing)
    cost far more than SQLite's, over a third of the writer's CPU per Sentry envelope
    (bench/README). Elsewhere `query()`, the same lookup as SQLAlchemy runs it, with the
    row locks PostgreSQL needs (SQLite's writer holds the whole file).
    """
    if conn.dialect.name != "sqlite":
        return conn.execute(query())
    lookup = _driver_lookup(conn.dialect, table, key, columns)
    cursor = conn.connection.cursor()
    try:
        cursor.execute(lookup.sql, (project_id, orjson.dumps(list(values)).decode()))
        rows = cursor.fetchall()
    finally:
        cursor.close()
    if not any(lookup.processors):
        return rows
    return [
        tuple(
            value if process is None else process(value)
            for value, process in zip(row, lookup.processors, strict=True)
        )
        for row in rows
    ]


def _later(column: sa.Column[Any], param: str) -> Any:
    return sa.case((column < sa.bindparam(param), sa.bindparam(param)), else_=column)


def _earlier(column: sa.Column[Any], param: str) -> Any:
    """An event with an older timestamp than any stored (clients' clocks, queued SDKs)
    moves `first_seen` back: first seen is the earliest occurrence, not the first
    received."""
    return sa.case((column > sa.bindparam(param), sa.bindparam(param)), else_=column)


_INSERT_EVENTS = sa.insert(EVENTS).returning(
    EVENTS.c.id, EVENTS.c.project_id, EVENTS.c.event_id, sort_by_parameter_order=True
)
_UPDATE_GROUPS = (
    GROUPS.update()
    .where(GROUPS.c.id == sa.bindparam("b_id"))
    .values(
        count=GROUPS.c.count + sa.bindparam("b_count"),
        user_count=GROUPS.c.user_count + sa.bindparam("b_users"),
        account_count=GROUPS.c.account_count + sa.bindparam("b_accounts"),
        first_seen=_earlier(GROUPS.c.first_seen, "b_first"),
        last_seen=_later(GROUPS.c.last_seen, "b_last"),
        last_release=sa.func.coalesce(sa.bindparam("b_release"), GROUPS.c.last_release),
        status=sa.bindparam("b_status"),
        is_regression=sa.bindparam("b_regression"),
        resolved_at=sa.bindparam("b_resolved_at"),
        resolved_in_release=sa.bindparam("b_resolved_in"),
        ignored_at=sa.bindparam("b_ignored_at"),
        ignore_until=sa.bindparam("b_ignore_until"),
        ignore_until_count=sa.bindparam("b_ignore_count"),
        ignore_until_user_count=sa.bindparam("b_ignore_users"),
        ignore_base_count=sa.bindparam("b_ignore_base"),
        ignore_base_user_count=sa.bindparam("b_ignore_base_users"),
    )
)


@cache
def _update_people(table: sa.Table) -> Any:
    return (
        table.update()
        .where(table.c.id == sa.bindparam("b_id"))
        .values(
            event_count=table.c.event_count + sa.bindparam("b_count"),
            first_seen=_earlier(table.c.first_seen, "b_first"),
            last_seen=_later(table.c.last_seen, "b_last"),
            **{
                # Typed, so that `data` is bound as JSON, not as a bare dict.
                name: sa.func.coalesce(
                    sa.bindparam(f"b_{name}", type_=table.c[name].type), table.c[name]
                )
                for name in _people_attributes(table)
            },
        )
    )


def _people_attributes(table: sa.Table) -> list[str]:
    return [
        c.name for c in table.c if c.name in {"email", "username", "name", "ip_address", "data"}
    ]


@cache
def _update_links(table: sa.Table, other: str) -> Any:
    return (
        table.update()
        .where(
            table.c.group_id == sa.bindparam("b_group"),
            table.c[other] == sa.bindparam("b_other"),
        )
        .values(
            event_count=table.c.event_count + sa.bindparam("b_count"),
            first_seen=_earlier(table.c.first_seen, "b_first"),
            last_seen=_later(table.c.last_seen, "b_last"),
        )
    )


_EXCEPTION_LIST = TypeAdapter(list[ExceptionIn])


def _exceptions_json(event: EventIn) -> orjson.Fragment | None:
    """The exception chain as the JSON column stores it, written by pydantic's serializer
    in one call and embedded as it is by the column's orjson encoder: the same bytes as
    dumping each exception to Python objects and encoding those, at half the cost."""
    if not event.exceptions:
        return None
    return orjson.Fragment(_EXCEPTION_LIST.dump_json(event.exceptions))


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class BatchWriter:
    """The single writer task of this process (see the module docstring)."""

    def __init__(
        self,
        *,
        database: Database,
        pubsub: PubSub | None = None,
        max_batch: int = 500,
        max_wait: float = 0.0,
        clock: Clock = utcnow,
        quotas: Quotas | None = None,
        transactions: int = 1,
    ) -> None:
        self._database = database
        # SQLite has one writer: a second transaction would only wait for the lock.
        self._transactions = 1 if database.engine.dialect.name == "sqlite" else transactions
        # Charged by `ingest_events`, which every dialect calls with this writer.
        self.quotas = quotas
        self._pubsub = pubsub
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._clock = clock
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._publish_queue: asyncio.Queue[list[tuple[str, dict[str, Any]]] | None] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._closing = False
        self.batches_written = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        """Submissions waiting for the writer (for metrics)."""
        return self._queue.qsize()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="errorgraph-batch-writer")
        self._publisher = asyncio.create_task(self._publish_loop(), name="errorgraph-publisher")

    async def stop(self) -> None:
        """Write what is queued, then stop; later submissions are refused."""
        self._closing = True
        if self._task is not None:
            await self._queue.put(None)
            await self._task
        if self._publisher is not None:
            await self._publish_queue.put(None)
            await self._publisher

    async def submit(self, *, project_id: int, events: list[PreparedEvent]) -> list[IngestResult]:
        if not events:
            return []
        if self._closing or not self.running:
            raise Unavailable("the server is shutting down")
        future: asyncio.Future[list[IngestResult]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(project_id=project_id, events=events, future=future))
        return await future

    async def _next_batch(self) -> tuple[list[_Pending], bool]:
        first = await self._queue.get()
        if first is None:
            return [], True
        batch, size = [first], len(first.events)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while size < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                return batch, True
            batch.append(item)
            size += len(item.events)
        return batch, False

    async def _run(self) -> None:
        stop = False
        slots = asyncio.Semaphore(self._transactions)
        in_flight: set[asyncio.Task[None]] = set()

        async def write(batch: list[_Pending]) -> None:
            try:
                await self._write_batch(batch)
            finally:
                slots.release()

        while not stop:
            # A slot first: batches wait in the queue, where later callers join them.
            await slots.acquire()
            batch, stop = await self._next_batch()
            if not batch:
                slots.release()
                continue
            if self._transactions == 1:
                await write(batch)
            else:
                task = asyncio.create_task(write(batch))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            # Not kept while the next batch is awaited: an idle process held its last one
            # (events, payloads, the callers' futures) until more came.
            del batch
        if in_flight:
            await asyncio.gather(*in_flight)

    async def _write_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            results, messages = await self._write(batch)
        except Exception as exc:
            if len(batch) > 1:
                # One caller's bad data must not fail the others: retry each on its own.
                for item in batch:
                    await self._write_batch([item])
                return
            log.exception("ingest batch failed")
            error = exc if isinstance(exc, InvalidInput) else Unavailable("could not store events")
            if not batch[0].future.done():
                batch[0].future.set_exception(error)
            return
        self.batches_written += 1
        metrics.observe_batch(
            events=sum(len(item.events) for item in batch), seconds=time.perf_counter() - started
        )
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
        if self._pubsub is not None and messages:
            self._publish_queue.put_nowait(messages)

    async def _publish_loop(self) -> None:
        """Publish in commit order, off the writer's path: a slow broker never slows ingest."""
        while True:
            messages = await self._publish_queue.get()
            if messages is None:
                return
            if self._pubsub is None:
                continue
            try:
                await self._pubsub.publish_many(messages)
            except Exception:
                log.exception("publishing %d messages failed", len(messages))

    async def _write(
        self, batch: list[_Pending]
    ) -> tuple[list[list[IngestResult]], list[tuple[str, dict[str, Any]]]]:
        received = self._clock()
        writer = self._database.sync_writer
        if writer is not None:
            # The whole transaction in one call to a thread: through the async driver each
            # statement was a round trip to SQLite's thread and back through the event
            # loop, where it queued behind the requests being read (a dozen per batch).
            written = await asyncio.to_thread(
                _write_in_transaction, writer, batch, received, self._database.writer_turns
            )
            self._database.wrote()
            return written
        engine = self._database.batch_engine
        if engine is None:
            async with self._database.write_sessions.begin() as session:
                conn = await session.connection()
                return await conn.run_sync(_write_batch, batch, received)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(_write_batch, batch, received)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # Its connections are not pinged before use (see app.db): this one had gone,
            # and the pool has dropped it with every connection as old. Nothing was kept
            # (an event a lost commit did keep is found by its id and not counted twice).
            log.warning("ingest: the database connection was lost; writing the batch again")
        async with engine.begin() as conn:
            return await conn.run_sync(_write_batch, batch, received)


def _write_in_transaction(
    engine: Engine, batch: list[_Pending], received: datetime, turns: WriterTurns | None
) -> tuple[list[list[IngestResult]], list[tuple[str, dict[str, Any]]]]:
    with turns or contextlib.nullcontext(), engine.connect() as conn:
        conn.execution_options(sqlite_begin="IMMEDIATE")  # see app.db
        with conn.begin():
            return _write_batch(conn, batch, received)


def _write_batch(
    conn: Connection, batch: list[_Pending], received: datetime
) -> tuple[list[list[IngestResult]], list[tuple[str, dict[str, Any]]]]:
    entries = [(item.project_id, prepared) for item in batch for prepared in item.events]

    # 1. Duplicates: against what is stored, and within the batch.
    stored: dict[tuple[int, str], tuple[int, int]] = {}
    ids_by_project: dict[int, list[str]] = {}
    for project_id, prepared in entries:
        ids_by_project.setdefault(project_id, []).append(prepared.event.event_id)
    for project_id, event_ids in ids_by_project.items():
        for chunk in _chunks(sorted(set(event_ids))):
            rows = _lookup(
                conn,
                EVENTS,
                project_id,
                "event_id",
                chunk,
                ("event_id", "id", "group_id"),
                lambda chunk=chunk, project_id=project_id: sa.select(
                    EVENTS.c.event_id, EVENTS.c.id, EVENTS.c.group_id
                ).where(EVENTS.c.project_id == project_id, EVENTS.c.event_id.in_(chunk)),
            )
            for event_id, row_id, group_id in rows:
                stored[(project_id, event_id)] = (row_id, group_id)
    fresh: list[tuple[int, PreparedEvent]] = []
    first_in_batch: set[tuple[int, str]] = set()
    for project_id, prepared in entries:
        key = (project_id, prepared.event.event_id)
        if key in stored or key in first_in_batch:
            continue
        first_in_batch.add(key)
        fresh.append((project_id, prepared))

    # 2. Users and accounts.
    users: dict[tuple[int, str], _Seen] = {}
    accounts: dict[tuple[int, str], _Seen] = {}
    for project_id, prepared in fresh:
        event = prepared.event
        if event.user is not None and (external := event.user.external_id()):
            users.setdefault((project_id, external), _Seen()).add(
                event.timestamp,
                {
                    "email": event.user.email,
                    "username": event.user.username,
                    "name": event.user.name,
                    "ip_address": event.user.ip_address,
                    "data": event.user.data or None,
                },
            )
        if event.account is not None and event.account.id:
            accounts.setdefault((project_id, event.account.id), _Seen()).add(
                event.timestamp, {"name": event.account.name, "data": event.account.data or None}
            )
    user_ids, created_users = _insert_people(conn, USERS, users)
    account_ids, created_accounts = _insert_people(conn, ACCOUNTS, accounts)

    # 3. Groups: their ids, the missing ones created (not locked yet).
    groups: dict[tuple[int, str], _Seen] = {}
    first_event: dict[tuple[int, str], PreparedEvent] = {}
    for project_id, prepared in fresh:
        key = (project_id, prepared.grouping.hash)
        seen = groups.setdefault(key, _Seen())
        seen.add(prepared.event.timestamp, {"release": prepared.event.release})
        if prepared.event.release:
            seen.attrs.setdefault("releases", []).append(prepared.event.release)
        if key not in first_event or prepared.event.timestamp < first_event[key].event.timestamp:
            first_event[key] = prepared
    group_rows, created_groups = _upsert_groups(conn, groups, first_event)

    # 4. Events.
    event_rows = []
    for project_id, prepared in fresh:
        event = prepared.event
        group_id = group_rows[(project_id, prepared.grouping.hash)]["id"]
        user_key = (project_id, event.user.external_id()) if event.user else None
        primary = event.primary_exception
        event_rows.append(
            {
                "project_id": project_id,
                "group_id": group_id,
                "event_id": event.event_id,
                "timestamp": event.timestamp,
                "received_at": received,
                "type": event.type.value,
                "level": event.level.value,
                "platform": event.platform,
                "logger": event.logger,
                "environment": event.environment,
                "release": event.release,
                "server_name": event.server_name,
                "transaction": event.transaction,
                "message": event.message,
                "exception_type": primary.type if primary else None,
                "exception_value": primary.value if primary else None,
                "exceptions": _exceptions_json(event),
                "raw_stacktrace": event.raw_stacktrace,
                "url": event.url,
                "user_agent": event.user_agent,
                "request": event.request,
                "user": event.user.model_dump(mode="json", exclude_none=True)
                if event.user
                else None,
                "affected_user_id": user_ids.get(user_key) if user_key else None,
                "account": event.account.model_dump(mode="json", exclude_none=True)
                if event.account
                else None,
                "account_id": account_ids.get((project_id, event.account.id))
                if event.account and event.account.id
                else None,
                "session_id": event.session_id,
                "window_id": event.window_id,
                "breadcrumbs": event.breadcrumbs or None,
                "tags": event.tags or None,
                "extra": event.extra or None,
                "contexts": event.contexts or None,
                "fingerprint": event.fingerprint,
                "dialect": event.dialect,
                "client_ip": event.client_ip,
            }
        )
    new_ids: dict[tuple[int, str], int] = {}
    # In the order received (ids follow it); only a client's repeated event id, sent to
    # two transactions at once, can make them wait for each other here, and the repeat
    # is then answered as a duplicate.
    for chunk in _chunks(event_rows):
        for row_id, project_id, event_id in _run(conn, _INSERT_EVENTS, chunk):
            new_ids[(project_id, event_id)] = row_id
    if fresh and conn.dialect.name == "sqlite":
        # Full-text rows (see migration 0005); PostgreSQL indexes an expression instead.
        conn.exec_driver_sql(
            SQLITE_FTS_INSERT,
            [
                sqlite_fts_row(new_ids[(project_id, prepared.event.event_id)], prepared.event)
                for project_id, prepared in fresh
            ],
        )

    # From here on rows that other transactions update too are locked, until the commit:
    # the events above are written while another transaction (of another process) may
    # still hold them. Users, accounts, then groups, each in key order.
    _count_people(conn, USERS, users, user_ids, created_users)
    _count_people(conn, ACCOUNTS, accounts, account_ids, created_accounts)
    if conn.dialect.name != "sqlite":
        # Read again under the lock: another transaction may have changed them since.
        # On SQLite this transaction has held the file's write lock from its start.
        group_rows = {}
        _select_groups(conn, list(groups), group_rows, lock=True)

    # 5. Which users and accounts each group affected.
    group_users: dict[tuple[int, int], _Seen] = {}
    group_accounts: dict[tuple[int, int], _Seen] = {}
    for row in event_rows:
        if row["affected_user_id"] is not None:
            group_users.setdefault((row["group_id"], row["affected_user_id"]), _Seen()).add(
                row["timestamp"]
            )
        if row["account_id"] is not None:
            group_accounts.setdefault((row["group_id"], row["account_id"]), _Seen()).add(
                row["timestamp"]
            )
    new_users = _upsert_links(conn, GROUP_USERS, "user_id", group_users)
    new_accounts = _upsert_links(conn, GROUP_ACCOUNTS, "account_id", group_accounts)

    # 6. Group counters and status.
    regressed, updates = _group_updates(
        group_rows, groups, new_users, new_accounts, received=received
    )
    _run(conn, _UPDATE_GROUPS, updates)

    # 7. Results, per caller, in the order sent; and what to publish after commit.
    results: list[list[IngestResult]] = []
    answered: set[tuple[int, str]] = set()
    for item in batch:
        answer = []
        for prepared in item.events:
            key = (item.project_id, prepared.event.event_id)
            if key in stored:
                row_id, group_id = stored[key]
                answer.append(
                    IngestResult(
                        event_id=prepared.event.event_id,
                        status="duplicate",
                        id=row_id,
                        group_id=group_id,
                        project_id=item.project_id,
                    )
                )
                continue
            group_key = (item.project_id, prepared.grouping.hash)
            group_id = group_rows[group_key]["id"]
            row_id = new_ids[key]
            if key in answered:
                status: Outcome = "duplicate"
            else:
                answered.add(key)
                status = "created" if group_key in created_groups else "existing"
            answer.append(
                IngestResult(
                    event_id=prepared.event.event_id,
                    status=status,
                    id=row_id,
                    group_id=group_id,
                    project_id=item.project_id,
                    regression=group_id in regressed,
                )
            )
        results.append(answer)

    messages: list[tuple[str, dict[str, Any]]] = []
    for key in created_groups:
        messages.append((GROUP_CREATED, {"group_id": group_rows[key]["id"], "project_id": key[0]}))
    for row in event_rows:
        messages.append(
            (
                EVENT_CAPTURED,
                {
                    "event_id": new_ids[(row["project_id"], row["event_id"])],
                    "group_id": row["group_id"],
                    "project_id": row["project_id"],
                },
            )
        )
    # A group's first new event of the batch names this update everywhere: processes
    # that all receive it agree on it (alerts dedupe a regression by it).
    first_new: dict[int, int] = {}
    for row in event_rows:
        row_id = new_ids[(row["project_id"], row["event_id"])]
        first_new[row["group_id"]] = min(row_id, first_new.get(row["group_id"], row_id))
    for key, row in group_rows.items():
        if key in groups:
            kind = "REGRESSION" if row["id"] in regressed else "NEW_EVENT"
            messages.append(
                (
                    GROUP_UPDATED,
                    {
                        "group_id": row["id"],
                        "project_id": key[0],
                        "kind": kind,
                        "event_id": first_new[row["id"]],
                    },
                )
            )
    return results, messages


def _insert_people(
    conn: Connection, table: sa.Table, seen: dict[tuple[int, str], _Seen]
) -> tuple[dict[tuple[int, str], int], set[tuple[int, str]]]:
    """Users or accounts by (project, external id) → our id, inserting the new ones with
    this batch's counts; and which ones this transaction created. The others are counted
    by `_count_people`, later (see the module docstring)."""
    if not seen:
        return {}, set()
    attr_columns = _people_attributes(table)
    ids: dict[tuple[int, str], int] = {}
    _select_people(conn, table, list(seen), ids)
    # Inserts, then updates, each in key order (see the module docstring).
    missing = sorted(key for key in seen if key not in ids)
    for chunk in _chunks(missing):
        rows = [
            {
                "project_id": key[0],
                "external_id": key[1],
                "first_seen": seen[key].first,
                "last_seen": seen[key].last,
                "event_count": seen[key].count,
                **{name: seen[key].attrs.get(name) for name in attr_columns},
            }
            for key in chunk
        ]
        stmt = _insert_ignoring_conflicts(
            conn.dialect.name, table, "id", "project_id", "external_id"
        )
        for row_id, project_id, external_id in _run(conn, stmt, rows):
            ids[(project_id, external_id)] = row_id
    created = {key for key in missing if key in ids}
    lost_race = [key for key in missing if key not in ids]
    if lost_race:
        _select_people(conn, table, lost_race, ids)
    return ids, created


def _count_people(
    conn: Connection,
    table: sa.Table,
    seen: dict[tuple[int, str], _Seen],
    ids: dict[tuple[int, str], int],
    created: set[tuple[int, str]],
) -> None:
    """Add this batch's events to the users or accounts it did not create, in id order."""
    attr_columns = _people_attributes(table)
    existing = sorted((key for key in seen if key not in created), key=ids.__getitem__)
    if existing:
        _run(
            conn,
            _update_people(table),
            [
                {
                    "b_id": ids[key],
                    "b_count": seen[key].count,
                    "b_first": seen[key].first,
                    "b_last": seen[key].last,
                    **{f"b_{name}": seen[key].attrs.get(name) for name in attr_columns},
                }
                for key in existing
            ],
        )


def _select_people(
    conn: Connection,
    table: sa.Table,
    keys: list[tuple[int, str]],
    into: dict[tuple[int, str], int],
) -> None:
    by_project: dict[int, list[str]] = {}
    for project_id, external_id in keys:
        by_project.setdefault(project_id, []).append(external_id)
    for project_id, external_ids in by_project.items():
        for chunk in _chunks(external_ids):
            rows = _lookup(
                conn,
                table,
                project_id,
                "external_id",
                chunk,
                ("id", "external_id"),
                lambda chunk=chunk, project_id=project_id: (
                    sa.select(table.c.id, table.c.external_id)
                    .where(table.c.project_id == project_id, table.c.external_id.in_(chunk))
                    # FOR KEY SHARE: no one deletes them before this batch's events that
                    # refer to them are in; writers updating them are not held up.
                    .with_for_update(read=True, key_share=True)
                ),
            )
            for row_id, external_id in rows:
                into[(project_id, external_id)] = row_id


GROUP_STATE_COLUMNS = (
    "id",
    "status",
    "count",
    "user_count",
    "resolved_at",
    "resolved_in_release",
    "ignored_at",
    "ignore_until",
    "ignore_until_count",
    "ignore_until_user_count",
    "ignore_base_count",
    "ignore_base_user_count",
    "is_regression",
)


def _select_groups(
    conn: Connection,
    keys: list[tuple[int, str]],
    into: dict[tuple[int, str], dict[str, Any]],
    *,
    lock: bool = False,
) -> None:
    by_project: dict[int, list[str]] = {}
    for project_id, fingerprint in keys:
        by_project.setdefault(project_id, []).append(fingerprint)
    names = ("fingerprint", *GROUP_STATE_COLUMNS)
    for project_id, fingerprints in sorted(by_project.items()):
        for chunk in _chunks(sorted(fingerprints)):

            def query(chunk: Sequence[str] = chunk, project_id: int = project_id) -> Any:
                # FOR NO KEY UPDATE when locking: what the update below takes anyway. FOR
                # UPDATE would also wait for the key-share locks that inserting an event
                # of the group takes (its foreign key), and this transaction's events are
                # inserted while another may hold those. Else FOR KEY SHARE: the group is
                # not deleted before this batch's events are in, and writers are not held
                # up. Locked in key order (see the module docstring), as the chunks go.
                return (
                    sa.select(*(GROUPS.c[name] for name in names))
                    .where(GROUPS.c.project_id == project_id, GROUPS.c.fingerprint.in_(chunk))
                    .order_by(GROUPS.c.fingerprint)
                    .with_for_update(read=not lock, key_share=True)
                )

            for row in _lookup(conn, GROUPS, project_id, "fingerprint", chunk, names, query):
                into[(project_id, row[0])] = dict(zip(GROUP_STATE_COLUMNS, row[1:], strict=True))


def _upsert_groups(
    conn: Connection,
    seen: dict[tuple[int, str], _Seen],
    first_event: dict[tuple[int, str], PreparedEvent],
) -> tuple[dict[tuple[int, str], dict[str, Any]], set[tuple[int, str]]]:
    """The groups of `seen` by key (their ids; their state is read again under a lock
    later), inserting the missing ones; and which ones this transaction created."""
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    if not seen:
        return rows, set()
    _select_groups(conn, list(seen), rows)
    missing = sorted(key for key in seen if key not in rows)
    created: set[tuple[int, str]] = set()
    # New groups start with zero counts: every group then takes the same update.
    for chunk in _chunks(missing):
        values = []
        for key in chunk:
            prepared = first_event[key]
            event = prepared.event
            primary = event.primary_exception
            releases = seen[key].attrs.get("releases") or []
            values.append(
                {
                    "project_id": key[0],
                    "fingerprint": key[1],
                    "grouping_strategy": prepared.grouping.strategy,
                    "grouping_reason": prepared.grouping.reason[:1000],
                    "title": prepared.title[:1000],
                    "culprit": prepared.culprit[:1000] if prepared.culprit else None,
                    "exception_type": primary.type if primary else None,
                    "message": primary.value if primary and primary.value else event.message,
                    "level": event.level.value,
                    "platform": event.platform,
                    "status": GroupStatus.UNRESOLVED.value,
                    "is_regression": False,
                    "count": 0,
                    "user_count": 0,
                    "account_count": 0,
                    "first_seen": seen[key].first,
                    "last_seen": seen[key].first,
                    "first_release": releases[0] if releases else None,
                    "last_release": None,
                }
            )
        stmt = _insert_ignoring_conflicts(conn.dialect.name, GROUPS, "project_id", "fingerprint")
        created.update((project_id, fp) for project_id, fp in _run(conn, stmt, values))
    if missing:
        # Includes groups another process created between our select and insert.
        _select_groups(conn, missing, rows)
    return rows, created


def _upsert_links(
    conn: Connection, table: sa.Table, other: str, seen: dict[tuple[int, int], _Seen]
) -> dict[int, int]:
    """Insert or update group↔user (or account) links; returns new links per group."""
    new_per_group: dict[int, int] = {}
    if not seen:
        return new_per_group
    keys = sorted(seen)
    created: set[tuple[int, int]] = set()
    for chunk in _chunks(keys):
        stmt = _insert_ignoring_conflicts(conn.dialect.name, table, "group_id", other)
        rows = [
            {
                "group_id": group_id,
                other: other_id,
                "first_seen": seen[(group_id, other_id)].first,
                "last_seen": seen[(group_id, other_id)].last,
                "event_count": seen[(group_id, other_id)].count,
            }
            for group_id, other_id in chunk
        ]
        created.update((group_id, other_id) for group_id, other_id in _run(conn, stmt, rows))
    for group_id, _ in created:
        new_per_group[group_id] = new_per_group.get(group_id, 0) + 1
    existing = [key for key in keys if key not in created]
    if existing:
        _run(
            conn,
            _update_links(table, other),
            [
                {
                    "b_group": group_id,
                    "b_other": other_id,
                    "b_count": seen[(group_id, other_id)].count,
                    "b_first": seen[(group_id, other_id)].first,
                    "b_last": seen[(group_id, other_id)].last,
                }
                for group_id, other_id in existing
            ],
        )
    return new_per_group


def _group_updates(
    group_rows: dict[tuple[int, str], dict[str, Any]],
    seen: dict[tuple[int, str], _Seen],
    new_users: dict[int, int],
    new_accounts: dict[int, int],
    *,
    received: datetime,
) -> tuple[set[int], list[dict[str, Any]]]:
    """Counter increments and the status each group ends the batch in.

    A resolved group reopens on a new event (a regression) unless it was resolved "in the
    next release" and the event carries no release or that same release. An ignored group
    goes back to unresolved when its `until` time has passed or its event or user count
    has grown by the number it was ignored for.
    """
    regressed: set[int] = set()
    updates = []
    for key, aggregate in seen.items():
        row = dict(group_rows[key])
        group_id = row["id"]
        releases: list[str] = aggregate.attrs.get("releases") or []
        status = row["status"]
        if status == GroupStatus.RESOLVED:
            pinned = row["resolved_in_release"]
            if pinned is None or any(release != pinned for release in releases):
                status = GroupStatus.UNRESOLVED.value
                row.update(is_regression=True, resolved_at=None, resolved_in_release=None)
                regressed.add(group_id)
        elif status == GroupStatus.IGNORED:
            count = row["count"] + aggregate.count
            users = row["user_count"] + new_users.get(group_id, 0)
            until, until_count = row["ignore_until"], row["ignore_until_count"]
            until_users = row["ignore_until_user_count"]
            if (
                (until is not None and received >= until)
                or (
                    until_count is not None
                    and count - (row["ignore_base_count"] or 0) >= until_count
                )
                or (
                    until_users is not None
                    and users - (row["ignore_base_user_count"] or 0) >= until_users
                )
            ):
                status = GroupStatus.UNRESOLVED.value
                row.update(
                    ignored_at=None,
                    ignore_until=None,
                    ignore_until_count=None,
                    ignore_until_user_count=None,
                    ignore_base_count=None,
                    ignore_base_user_count=None,
                )
        updates.append(
            {
                "b_id": group_id,
                "b_count": aggregate.count,
                "b_users": new_users.get(group_id, 0),
                "b_accounts": new_accounts.get(group_id, 0),
                "b_first": aggregate.first,
                "b_last": aggregate.last,
                "b_release": aggregate.attrs.get("release"),
                "b_status": status,
                "b_regression": row["is_regression"],
                "b_resolved_at": row["resolved_at"],
                "b_resolved_in": row["resolved_in_release"],
                "b_ignored_at": row["ignored_at"],
                "b_ignore_until": row["ignore_until"],
                "b_ignore_count": row["ignore_until_count"],
                "b_ignore_users": row["ignore_until_user_count"],
                "b_ignore_base": row["ignore_base_count"],
                "b_ignore_base_users": row["ignore_base_user_count"],
            }
        )
    return regressed, updates
