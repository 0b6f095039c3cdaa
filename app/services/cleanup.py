"""Retention cleanup: the task that applies each project's retention policy.

What goes, per project, with `cutoff = now - days` (days from the project's policy, else
the server default policy, else `RETENTION_DAYS`):

- events received before the cutoff. `received_at` is the server's clock: an SDK with a
  wrong clock can neither make its events vanish at once nor keep them for ever;
- resolved groups past the Error Tracker rule ("Days to keep resolved errors before
  deletion", `../shared/seeds/003_5d6793c66178ddef.txt`): resolved before the cutoff and
  not seen since, with every event they still have;
- groups whose every event is gone.

Group counters (`count`, `user_count`, `account_count`) and `first_seen` stay what they
were: they count every occurrence ever seen, as the Error Tracker's `count` does while it
keeps five occurrences. A group's count can therefore exceed the events still stored.
Affected users and accounts stay as well (their link to a deleted group goes with it).

One run per deployment at a time. Every server process runs the task; each tick it tries
a lock without waiting and, holding it, runs when the newest recorded run is older than
`retention_interval_seconds` (restarts do not postpone cleanup for ever). The lock is a
session-level advisory lock on PostgreSQL, held on one connection for the run (a process
that dies lets go with its connection). On SQLite it is an OS file lock (`flock`, through
`filelock`) on `<database file>.cleanup-lock` beside the database: SQLite serves one host,
the lock goes with a dead process, and no table has to change for it; an in-memory
database has one process, so an in-process lock does. `errorgraph purge` takes the same
lock, so a purge never runs beside the server's task.

Bounded work. A run takes at most `retention_run_limit` events (their ids are held in
memory; one export file per run) and deletes them `retention_batch_size` at a time, each
batch in its own short transaction — on SQLite a `BEGIN IMMEDIATE` like the batch
writer's, which waits for one batch at most. A project with more goes on in further runs.

Export before delete. With `auto_export_before_cleanup`, the run's events are written to
the policy's `file:///directory` as gzipped JSON lines (one `exports.event_record` per
line) in a temporary file that is fsynced and renamed into place, and the directory
fsynced (`exports.AtomicFile`). Only then is anything deleted, and only the events in the
file. A failed export deletes nothing: the run is recorded `failed` with the reason, and
logged. A run with nothing to delete writes no file.

Concurrency with ingest. Events are deleted by id, so an event that arrives meanwhile is
never deleted unexported. A group is deleted only when it has no event left, checked after
locking its row (`FOR UPDATE`, in a statement of its own so the check sees every commit
before the lock): ingest holds that lock while it adds events to a group, so it either
commits first and the group stays, or finds the group gone and creates it anew.

Every run is a `RetentionRun` row (`running`, then `ok` or `failed`); a run left
`running` by a process that died is marked failed by the next one. Runs older than
`RETENTION_DAYS` are pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import orjson
import sqlalchemy as sa
from filelock import FileLock, Timeout
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.config import Settings
from app.db import Database
from app.errors import NotFound
from app.models import Event, ExportRequest, Group, GroupStatus, Project, RetentionRun, utcnow
from app.services.exports import AtomicFile, event_record
from app.services.logs import prune_log_messages
from app.services.retention import Retention, retention_for_projects

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

EVENTS = Event.__table__
GROUPS = Group.__table__
RUNS = RetentionRun.__table__

# Any fixed number: it only has to be the same in every errorgraph process (and differ
# from app.db's migration lock).
CLEANUP_LOCK_ID = 0x636C65616E
# How often a process looks whether a run is due, at most.
MAX_TICK_SECONDS = 60.0
INTERRUPTED = "interrupted: the process running it stopped before it finished"

Stage = Literal["export", "delete"]


@dataclass(frozen=True)
class CleanupProgress:
    """Told to a progress callback as a run goes: `done` of `total` events."""

    project_slug: str
    stage: Stage
    done: int
    total: int


ProgressCallback = Callable[[CleanupProgress], None]


@dataclass(frozen=True)
class RunOutcome:
    """One project's run. `status` is `ok`, `failed`, or `planned` (a dry run: the counts
    are what a run would delete now). `more`: the run stopped at its limit."""

    project_id: int
    project_slug: str
    status: str
    events_deleted: int
    groups_deleted: int
    run_id: int | None = None
    exported_to: str | None = None
    error: str | None = None
    more: bool = False


@dataclass(frozen=True)
class CleanupReport:
    """A cycle: the runs, and `skipped` when another cleanup held the lock (nothing ran)."""

    runs: list[RunOutcome] = field(default_factory=list)
    skipped: bool = False


class ExportFailed(Exception):
    """The export destination could not take the file; nothing was deleted."""


# --- The lock ----------------------------------------------------------------------------


class CleanupLock:
    """Held by at most one cleanup of the deployment (see the module docstring)."""

    _memory_locks: dict[int, asyncio.Lock] = {}

    def __init__(self, database: Database, settings: Settings) -> None:
        self._database = database
        path = settings.sqlite_path
        self._file = path.with_name(path.name + ".cleanup-lock") if path is not None else None

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[bool]:
        """Try the lock without waiting; yields whether it is held."""
        if self._database.engine.dialect.name == "postgresql":
            async with self._advisory() as held:
                yield held
        elif self._file is not None:
            async with self._file_lock() as held:
                yield held
        else:
            lock = self._memory_locks.setdefault(id(self._database.engine), asyncio.Lock())
            if lock.locked():
                yield False
                return
            async with lock:
                yield True

    @asynccontextmanager
    async def _advisory(self) -> AsyncIterator[bool]:
        conn = await self._database.engine.connect()
        try:
            # Autocommit: a session-level lock needs no transaction left open for the run.
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            held = bool(
                await conn.scalar(text("SELECT pg_try_advisory_lock(:id)"), {"id": CLEANUP_LOCK_ID})
            )
            try:
                yield held
            finally:
                if held:
                    try:
                        await conn.execute(
                            text("SELECT pg_advisory_unlock(:id)"), {"id": CLEANUP_LOCK_ID}
                        )
                    except BaseException:
                        # Never hand a connection still holding the lock back to the pool.
                        await conn.invalidate()
                        raise
        finally:
            await conn.close()

    @asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[bool]:
        assert self._file is not None
        lock = FileLock(self._file)
        try:
            await asyncio.to_thread(lock.acquire, timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            await asyncio.to_thread(lock.release)


# --- One cycle ---------------------------------------------------------------------------


async def run_cleanup(
    *,
    database: Database,
    settings: Settings,
    clock: Clock = utcnow,
    project_id: int | None = None,
    dry_run: bool = False,
    only_if_due: bool = False,
    progress: ProgressCallback | None = None,
) -> CleanupReport:
    """Apply the retention policies now (of one project, or of all), unless another
    cleanup holds the lock (`skipped`). `only_if_due`: run only when the newest recorded
    run is older than the interval (the server's task). `dry_run`: count, change nothing."""
    async with CleanupLock(database, settings).hold() as held:
        if not held:
            return CleanupReport(skipped=True)
        cleaner = _Cleaner(database=database, settings=settings, clock=clock, progress=progress)
        if only_if_due and not await cleaner.due():
            return CleanupReport()
        return CleanupReport(runs=await cleaner.cycle(project_id=project_id, dry_run=dry_run))


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _resolved_past(project_id: int, cutoff: datetime) -> Any:
    """Groups past the Error Tracker rule: resolved before the cutoff, not seen since."""
    return sa.and_(
        GROUPS.c.project_id == project_id,
        GROUPS.c.status == GroupStatus.RESOLVED.value,
        sa.func.coalesce(GROUPS.c.resolved_at, GROUPS.c.last_seen) < cutoff,
        GROUPS.c.last_seen < cutoff,
    )


def _destination_directory(destination: str) -> Path:
    parts = urlsplit(destination)
    if parts.scheme != "file" or parts.netloc not in {"", "localhost"} or not parts.path:
        raise ExportFailed(f"export destination must be a file:///directory URL: {destination!r}")
    return Path(unquote(parts.path))


def _file_name(slug: str, started: datetime, run_id: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", slug).strip(".-") or "project"
    return f"errorgraph-{safe}-{started:%Y%m%dT%H%M%SZ}-run{run_id}.jsonl.gz"


def _oserror_text(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or type(exc).__name__}{where}"


@dataclass
class _Targets:
    event_ids: list[int]
    groups: set[int]
    more: bool


class _Cleaner:
    def __init__(
        self,
        *,
        database: Database,
        settings: Settings,
        clock: Clock,
        progress: ProgressCallback | None,
    ) -> None:
        self._database = database
        self._settings = settings
        self._clock = clock
        self._progress = progress
        self._batch = settings.retention_batch_size

    def _tell(self, slug: str, stage: Stage, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(CleanupProgress(project_slug=slug, stage=stage, done=done, total=total))

    async def due(self) -> bool:
        async with self._database.sessions() as session:
            newest = await session.scalar(select(sa.func.max(RUNS.c.started_at)))
        if newest is None:
            return True
        interval = timedelta(seconds=self._settings.retention_interval_seconds)
        return self._clock() - newest >= interval

    async def cycle(self, *, project_id: int | None, dry_run: bool) -> list[RunOutcome]:
        now = self._clock()
        async with self._database.sessions() as session:
            query = select(Project.id, Project.slug).order_by(Project.id)  # type: ignore[call-overload]
            if project_id is not None:
                query = query.where(Project.id == project_id)
            projects = [(row.id, row.slug) for row in await session.execute(query)]
        if project_id is not None and not projects:
            raise NotFound(f"no project {project_id}", field="project")
        policies = await retention_for_projects(
            sessions=self._database.sessions,
            project_ids=[pid for pid, _ in projects],
            default_days=self._settings.retention_days,
        )
        if not dry_run:
            await self._close_interrupted(now)
        outcomes: list[RunOutcome] = []
        for pid, slug in projects:
            policy = policies[pid]
            cutoff = now - timedelta(days=policy.days)
            if dry_run:
                outcomes.append(await self._plan(pid, slug, cutoff))
                continue
            while True:
                outcome = await self._run(pid, slug, policy, cutoff)
                outcomes.append(outcome)
                # On while a run stopped at its limit and still got somewhere.
                if outcome.status != "ok" or not outcome.more or not outcome.events_deleted:
                    break
        if not dry_run and project_id is None:
            await self._housekeeping(now)
        return outcomes

    # Recording runs.

    async def _close_interrupted(self, now: datetime) -> None:
        """Holding the lock, no run is under way: one still `running` was cut short."""
        async with self._database.write_sessions.begin() as session:
            await session.execute(
                RUNS.update()
                .where(RUNS.c.status == "running")
                .values(status="failed", finished_at=now, error=INTERRUPTED)
            )

    async def _start_run(self, project_id: int, started: datetime) -> int:
        async with self._database.write_sessions.begin() as session:
            run_id = await session.scalar(
                RUNS.insert()
                .values(project_id=project_id, started_at=started, status="running")
                .returning(RUNS.c.id)
            )
        assert run_id is not None
        return int(run_id)

    async def _finish_run(self, run_id: int, **values: Any) -> None:
        async with self._database.write_sessions.begin() as session:
            await session.execute(
                RUNS.update().where(RUNS.c.id == run_id).values(finished_at=self._clock(), **values)
            )

    async def _housekeeping(self, now: datetime) -> None:
        """Old run records, expired export downloads and the ErrorStack log's leftovers."""
        keep_runs = now - timedelta(days=self._settings.retention_days)
        async with self._database.write_sessions.begin() as session:
            await session.execute(
                RUNS.delete().where(RUNS.c.started_at < keep_runs, RUNS.c.status != "running")
            )
            await session.execute(
                sa.delete(ExportRequest).where(ExportRequest.expires_at <= now)  # type: ignore[arg-type]
            )
        await prune_log_messages(sessions=self._database.write_sessions, now=now)

    # A run.

    async def _run(
        self, project_id: int, slug: str, policy: Retention, cutoff: datetime
    ) -> RunOutcome:
        started = self._clock()
        run_id = await self._start_run(project_id, started)
        exported_to: str | None = None
        events_deleted = groups_deleted = 0
        targets = _Targets(event_ids=[], groups=set(), more=False)
        # A cancellation (shutdown) passes through: the next run marks this one interrupted.
        try:
            targets = await self._targets(project_id, cutoff)
            if policy.auto_export_before_cleanup and targets.event_ids:
                exported_to = await self._export(
                    targets.event_ids, policy.export_destination or "", slug, started, run_id
                )
            events_deleted = await self._delete_events(project_id, slug, targets.event_ids, cutoff)
            groups_deleted = await self._delete_empty_groups(sorted(targets.groups))
        except Exception as exc:
            reason = str(exc) if isinstance(exc, ExportFailed) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ExportFailed):
                log.error("retention: project %s: export failed, nothing deleted: %s", slug, reason)
            else:
                log.exception("retention: project %s: the run failed", slug)
            await self._finish_run(
                run_id,
                status="failed",
                events_deleted=events_deleted,
                groups_deleted=groups_deleted,
                exported_to=exported_to,
                error=reason[:4000],
            )
            return RunOutcome(
                project_id=project_id,
                project_slug=slug,
                status="failed",
                events_deleted=events_deleted,
                groups_deleted=groups_deleted,
                run_id=run_id,
                exported_to=exported_to,
                error=reason,
            )
        await self._finish_run(
            run_id,
            status="ok",
            events_deleted=events_deleted,
            groups_deleted=groups_deleted,
            exported_to=exported_to,
        )
        if events_deleted or groups_deleted:
            log.info(
                "retention: project %s: deleted %d events and %d groups older than %s%s",
                slug,
                events_deleted,
                groups_deleted,
                cutoff.isoformat(),
                f", exported to {exported_to}" if exported_to else "",
            )
        return RunOutcome(
            project_id=project_id,
            project_slug=slug,
            status="ok",
            events_deleted=events_deleted,
            groups_deleted=groups_deleted,
            run_id=run_id,
            exported_to=exported_to,
            more=targets.more,
        )

    async def _targets(self, project_id: int, cutoff: datetime) -> _Targets:
        """The events this run deletes (at most the run limit) and the groups that may be
        left empty: those events' groups, resolved groups past the rule, and groups not
        seen since the cutoff (an empty one left by an interrupted run among them)."""
        limit = self._settings.retention_run_limit
        ids: list[int] = []
        groups: set[int] = set()
        sessions = self._database.sessions
        last: tuple[datetime, int] | None = None
        while len(ids) < limit:
            size = min(self._batch, limit - len(ids))
            query = select(EVENTS.c.id, EVENTS.c.group_id, EVENTS.c.received_at).where(
                EVENTS.c.project_id == project_id, EVENTS.c.received_at < cutoff
            )
            if last is not None:
                query = query.where(
                    sa.or_(
                        EVENTS.c.received_at > last[0],
                        sa.and_(EVENTS.c.received_at == last[0], EVENTS.c.id > last[1]),
                    )
                )
            query = query.order_by(EVENTS.c.received_at, EVENTS.c.id).limit(size)
            async with sessions() as session:
                rows = (await session.execute(query)).all()
            ids.extend(row.id for row in rows)
            groups.update(row.group_id for row in rows)
            if len(rows) < size:
                break
            last = (rows[-1].received_at, rows[-1].id)
        async with sessions() as session:
            resolved = list(
                await session.scalars(select(GROUPS.c.id).where(_resolved_past(project_id, cutoff)))
            )
            quiet = list(
                await session.scalars(
                    select(GROUPS.c.id).where(
                        GROUPS.c.project_id == project_id, GROUPS.c.last_seen < cutoff
                    )
                )
            )
        groups.update(resolved)
        groups.update(quiet)
        # Events of resolved groups past the rule that arrived after the cutoff.
        for chunk in _chunks(resolved, self._batch):
            after = 0
            while len(ids) < limit:
                size = min(self._batch, limit - len(ids))
                query = (
                    select(EVENTS.c.id)
                    .where(
                        EVENTS.c.group_id.in_(chunk),
                        EVENTS.c.received_at >= cutoff,
                        EVENTS.c.id > after,
                    )
                    .order_by(EVENTS.c.id)
                    .limit(size)
                )
                async with sessions() as session:
                    found = list(await session.scalars(query))
                ids.extend(found)
                if len(found) < size:
                    break
                after = found[-1]
        return _Targets(event_ids=sorted(ids), groups=groups, more=len(ids) >= limit)

    async def _export(
        self, ids: list[int], destination: str, slug: str, started: datetime, run_id: int
    ) -> str:
        """Write the events to one gzipped JSON-lines file, complete and on disk, or fail."""
        directory = _destination_directory(destination)
        path = directory / _file_name(slug, started, run_id)
        try:
            await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
            target = await asyncio.to_thread(AtomicFile, path)
        except OSError as exc:
            raise ExportFailed(f"cannot write to {destination}: {_oserror_text(exc)}") from exc
        compressed = gzip.GzipFile(filename=path.name[:-3], mode="wb", fileobj=target.raw)
        done = 0
        try:
            for chunk in _chunks(ids, self._batch):
                async with self._database.sessions() as session:
                    events = list(
                        await session.scalars(
                            select(Event).where(Event.id.in_(chunk)).order_by(Event.id)  # type: ignore[union-attr, arg-type]
                        )
                    )
                data = b"".join(orjson.dumps(event_record(event)) + b"\n" for event in events)
                await asyncio.to_thread(_locked_write, target, compressed, data)
                done += len(chunk)
                self._tell(slug, "export", done, len(ids))
            await asyncio.to_thread(_locked_close, target, compressed)
            await asyncio.to_thread(target.commit)
        except BaseException as exc:
            await asyncio.to_thread(_abandon, target, compressed)
            if isinstance(exc, OSError):
                raise ExportFailed(f"cannot write to {destination}: {_oserror_text(exc)}") from exc
            raise
        return path.as_uri()

    async def _delete_events(
        self, project_id: int, slug: str, ids: list[int], cutoff: datetime
    ) -> int:
        """Delete by id, a batch per transaction. The condition is checked again, so an
        event of a resolved group that reopened meanwhile stays."""
        deleted = done = 0
        still_past = select(GROUPS.c.id).where(_resolved_past(project_id, cutoff))
        for chunk in _chunks(ids, self._batch):
            async with self._database.write_sessions.begin() as session:
                result = await session.execute(
                    EVENTS.delete().where(
                        EVENTS.c.id.in_(chunk),
                        sa.or_(EVENTS.c.received_at < cutoff, EVENTS.c.group_id.in_(still_past)),
                    )
                )
                deleted += int(getattr(result, "rowcount", 0) or 0)
            done += len(chunk)
            self._tell(slug, "delete", done, len(ids))
            await asyncio.sleep(0)
        return deleted

    async def _delete_empty_groups(self, group_ids: list[int]) -> int:
        deleted = 0
        for chunk in _chunks(group_ids, self._batch):
            async with self._database.write_sessions.begin() as session:
                conn = await session.connection()
                deleted += await _delete_if_empty(conn, chunk)
            await asyncio.sleep(0)
        return deleted

    # A dry run.

    async def _plan(self, project_id: int, slug: str, cutoff: datetime) -> RunOutcome:
        """What a run would delete now, counted in SQL (no run limit applies)."""
        resolved = select(GROUPS.c.id).where(_resolved_past(project_id, cutoff))
        fresh = sa.exists().where(EVENTS.c.group_id == GROUPS.c.id, EVENTS.c.received_at >= cutoff)
        expired = sa.exists().where(EVENTS.c.group_id == GROUPS.c.id, EVENTS.c.received_at < cutoff)
        doomed_groups = select(sa.func.count()).where(
            GROUPS.c.project_id == project_id,
            sa.or_(
                _resolved_past(project_id, cutoff),
                sa.and_(~fresh, sa.or_(expired, GROUPS.c.last_seen < cutoff)),
            ),
        )
        events = select(sa.func.count()).where(
            EVENTS.c.project_id == project_id,
            sa.or_(EVENTS.c.received_at < cutoff, EVENTS.c.group_id.in_(resolved)),
        )
        async with self._database.sessions() as session:
            event_count = int(await session.scalar(events) or 0)
            group_count = int(await session.scalar(doomed_groups) or 0)
        return RunOutcome(
            project_id=project_id,
            project_slug=slug,
            status="planned",
            events_deleted=event_count,
            groups_deleted=group_count,
        )


def _locked_write(target: AtomicFile, compressed: gzip.GzipFile, data: bytes) -> None:
    # Through the AtomicFile's lock, so a discard after a cancelled write waits for it.
    with target.locked():
        compressed.write(data)


def _locked_close(target: AtomicFile, compressed: gzip.GzipFile) -> None:
    with target.locked():
        compressed.close()


def _abandon(target: AtomicFile, compressed: gzip.GzipFile) -> None:
    with target.locked(), contextlib.suppress(Exception):
        # Closed here, not by the garbage collector onto a closed file.
        compressed.close()
    target.discard()


async def _delete_if_empty(conn: AsyncConnection, group_ids: Sequence[int]) -> int:
    """Delete the groups of `group_ids` that have no event, in the caller's transaction.
    The rows are locked first, and checked in a second statement, whose snapshot (READ
    COMMITTED) includes whatever ingest committed before it let go of them."""
    locked = list(
        await conn.scalars(
            select(GROUPS.c.id)
            .where(GROUPS.c.id.in_(list(group_ids)))
            .order_by(GROUPS.c.id)
            .with_for_update()
        )
    )
    if not locked:
        return 0
    result = await conn.execute(
        GROUPS.delete().where(
            GROUPS.c.id.in_(locked),
            ~sa.exists().where(EVENTS.c.group_id == GROUPS.c.id),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --- The server's task -------------------------------------------------------------------


class RetentionCleanup:
    """The background task of one server process: every tick (the interval, at most a
    minute, the first one tick after start) it calls `run_cleanup(only_if_due=True)`; the
    lock and the run records make the deployment run it once per interval whatever the
    number of processes."""

    def __init__(
        self, *, database: Database, settings: Settings, clock: Clock | None = None
    ) -> None:
        self._database = database
        self._settings = settings
        self._clock = clock or utcnow
        self._task: asyncio.Task[None] | None = None
        self._ticked = asyncio.Condition()
        self.ticks = 0
        self.last_report: CleanupReport | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="errorgraph-retention")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def wait_for_ticks(self, count: int) -> None:
        """Wait until `count` ticks have completed (for tests and health checks)."""
        async with self._ticked:
            await self._ticked.wait_for(lambda: self.ticks >= count)

    async def _loop(self) -> None:
        pause = min(self._settings.retention_interval_seconds, MAX_TICK_SECONDS)
        while True:
            # A tick after start, not at once: a process starting up (or a test's server)
            # is not met by a cleanup; one that restarts often still runs it.
            await asyncio.sleep(pause)
            try:
                self.last_report = await run_cleanup(
                    database=self._database,
                    settings=self._settings,
                    clock=self._clock,
                    only_if_due=True,
                )
            except Exception:
                log.exception("retention: the cleanup failed")
            async with self._ticked:
                self.ticks += 1
                self._ticked.notify_all()
