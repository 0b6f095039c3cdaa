"""The retention cleanup with an injected clock: what it exports, what it deletes, what a
failing destination does, and that one runner of the deployment runs at a time. On SQLite,
and on PostgreSQL when a server is there."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select

from app.config import Settings
from app.domain.event import EventIn, ExceptionIn, Frame
from app.main import create_app
from app.models import Event, Group, GroupStatus, RetentionRun
from app.services.cleanup import CleanupLock, run_cleanup
from app.services.ingest import ingest_events
from app.services.issues import resolve_group
from app.services.keys import CreatedProject, create_project
from app.services.retention import latest_retention_run, list_retention_runs, set_retention
from app.services.runtime import Runtime

DAY0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    """The time every part of the runtime reads; tests move it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, days: float) -> Clock:
        self.now = DAY0 + timedelta(days=days)
        return self


def event(signature: int, *, at: datetime = DAY0, release: str = "1.0") -> EventIn:
    frames = [Frame(filename="shop/cart.py", function=f"checkout{signature}", in_app=True)]
    return EventIn(
        timestamp=at,
        release=release,
        exceptions=[ExceptionIn(type=f"Error{signature}", value="boom", frames=frames)],
    )


@pytest.fixture(params=["sqlite", "postgres"])
def db_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """Small batches, so that every path takes several transactions."""
    small = {"retention_batch_size": 3, "retention_days": 30}
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        return Settings(database_url=url, _env_file=None, **small)  # type: ignore[call-arg, arg-type]
    return settings.model_copy(update=small)


@pytest.fixture
def clock() -> Clock:
    return Clock(DAY0)


@pytest.fixture
async def clocked(db_settings: Settings, clock: Clock) -> AsyncIterator[Runtime]:
    runtime = await Runtime.start(db_settings, clock=clock)
    try:
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
async def shop(clocked: Runtime) -> CreatedProject:
    return await create_project(sessions=clocked.database.sessions, name="Shop")


async def ingest(runtime: Runtime, project: CreatedProject, *events: EventIn) -> None:
    await ingest_events(writer=runtime.writer, project=project.project, events=list(events))


async def stored_events(runtime: Runtime) -> list[Event]:
    async with runtime.database.sessions() as session:
        return list(await session.scalars(select(Event).order_by(Event.id)))  # type: ignore[arg-type]


async def stored_groups(runtime: Runtime) -> dict[str, Group]:
    async with runtime.database.sessions() as session:
        return {g.exception_type or "": g for g in await session.scalars(select(Group))}


async def cleanup(runtime: Runtime, clock: Clock, **options: object):
    return await run_cleanup(
        database=runtime.database,
        settings=runtime.settings,
        clock=clock,
        **options,  # type: ignore[arg-type]
    )


async def test_expired_events_are_exported_then_deleted(
    clocked: Runtime, shop: CreatedProject, clock: Clock, tmp_path: Path
):
    await ingest(clocked, shop, *[event(1) for _ in range(5)], event(2), event(2))
    clock.at(50)
    await ingest(clocked, shop, event(2), event(2), event(3))
    old = [e.event_id for e in await stored_events(clocked) if e.received_at == DAY0]
    assert len(old) == 7
    destination = tmp_path / "archive"
    await set_retention(
        sessions=clocked.database.sessions,
        project_id=shop.project.id,
        days=30,
        auto_export_before_cleanup=True,
        export_destination=destination.as_uri(),
    )

    report = await cleanup(clocked, clock.at(70))

    assert not report.skipped
    [run] = report.runs
    assert (run.status, run.events_deleted, run.groups_deleted) == ("ok", 7, 1)
    assert run.exported_to is not None
    files = list(destination.iterdir())
    assert [f.as_uri() for f in files] == [run.exported_to]  # no temporary file left
    assert files[0].name.endswith(f"-run{run.run_id}.jsonl.gz")
    with gzip.open(files[0], "rb") as lines:
        rows = [orjson.loads(line) for line in lines]
    assert sorted(row["event_id"] for row in rows) == sorted(old)
    assert {row["exception_type"] for row in rows} == {"Error1", "Error2"}
    assert all(row["received_at"].startswith("2026-01-01") for row in rows)

    kept = await stored_events(clocked)
    assert len(kept) == 3
    assert all(e.received_at == DAY0 + timedelta(days=50) for e in kept)
    groups = await stored_groups(clocked)
    assert set(groups) == {"Error2", "Error3"}
    # Counters are lifetime figures: cleanup does not lower them.
    assert groups["Error2"].count == 4

    async with clocked.database.sessions() as session:
        recorded = await session.get(RetentionRun, run.run_id)
    assert recorded is not None
    assert (recorded.status, recorded.events_deleted, recorded.groups_deleted) == ("ok", 7, 1)
    assert recorded.exported_to == run.exported_to
    assert recorded.finished_at == clock.now

    # Nothing more is due: the next run deletes nothing and writes no file.
    again = await cleanup(clocked, clock)
    assert [(r.status, r.events_deleted, r.exported_to) for r in again.runs] == [("ok", 0, None)]
    assert len(list(destination.iterdir())) == 1


@pytest.mark.parametrize("broken", ["a file", "under a file"])
async def test_a_failing_destination_deletes_nothing(
    clocked: Runtime,
    shop: CreatedProject,
    clock: Clock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    broken: str,
):
    await ingest(clocked, shop, event(1), event(1), event(2))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("in the way")
    destination = blocker if broken == "a file" else blocker / "exports"
    await set_retention(
        sessions=clocked.database.sessions,
        project_id=shop.project.id,
        days=30,
        auto_export_before_cleanup=True,
        export_destination=destination.as_uri(),
    )

    with caplog.at_level(logging.ERROR, logger="app.services.cleanup"):
        report = await cleanup(clocked, clock.at(40))

    [run] = report.runs
    assert run.status == "failed"
    assert (run.events_deleted, run.groups_deleted, run.exported_to) == (0, 0, None)
    assert run.error is not None and "cannot write to" in run.error
    assert len(await stored_events(clocked)) == 3
    assert set(await stored_groups(clocked)) == {"Error1", "Error2"}
    assert any("export failed, nothing deleted" in r.getMessage() for r in caplog.records)
    latest = await latest_retention_run(
        sessions=clocked.database.sessions, project_id=shop.project.id
    )
    assert latest is not None
    assert (latest.id, latest.status, latest.error) == (run.run_id, "failed", run.error)

    # Mended, the next run exports and deletes.
    await set_retention(
        sessions=clocked.database.sessions,
        project_id=shop.project.id,
        days=30,
        export_destination=(tmp_path / "archive").as_uri(),
    )
    [run] = (await cleanup(clocked, clock)).runs
    assert (run.status, run.events_deleted, run.groups_deleted) == ("ok", 3, 2)
    assert await stored_events(clocked) == []


async def test_without_export_events_are_deleted_in_batches(
    clocked: Runtime, shop: CreatedProject, clock: Clock
):
    await ingest(clocked, shop, *[event(i % 4) for i in range(10)])
    clock.at(20)
    await ingest(clocked, shop, event(0))
    seen: list[tuple[str, int, int]] = []

    report = await cleanup(
        clocked, clock.at(31), progress=lambda p: seen.append((p.stage, p.done, p.total))
    )

    [run] = report.runs
    assert (run.status, run.events_deleted, run.groups_deleted, run.exported_to) == (
        "ok",
        10,
        3,
        None,
    )
    # Batches of 3 (the settings of this module): four delete transactions.
    assert seen == [("delete", 3, 10), ("delete", 6, 10), ("delete", 9, 10), ("delete", 10, 10)]
    assert set(await stored_groups(clocked)) == {"Error0"}


async def test_a_run_stops_at_its_limit_and_the_next_goes_on(
    clocked: Runtime, shop: CreatedProject, clock: Clock, tmp_path: Path
):
    await ingest(clocked, shop, *[event(i % 2) for i in range(10)])
    destination = tmp_path / "archive"
    await set_retention(
        sessions=clocked.database.sessions,
        project_id=shop.project.id,
        days=30,
        auto_export_before_cleanup=True,
        export_destination=destination.as_uri(),
    )
    limited = clocked.settings.model_copy(update={"retention_run_limit": 4})

    report = await run_cleanup(database=clocked.database, settings=limited, clock=clock.at(31))

    assert [(r.events_deleted, r.groups_deleted, r.more) for r in report.runs] == [
        (4, 0, True),
        (4, 0, True),
        (2, 2, False),
    ]
    files = sorted(destination.iterdir())
    assert sorted(f.as_uri() for f in files) == sorted(r.exported_to for r in report.runs)
    lines = 0
    for path in files:
        with gzip.open(path) as rows:
            lines += len(rows.readlines())
    assert lines == 10
    assert await stored_events(clocked) == []


async def test_resolved_groups_past_the_error_tracker_rule(
    clocked: Runtime, shop: CreatedProject, clock: Clock, tmp_path: Path
):
    """A resolved group not seen for RETENTION_DAYS goes with all its events, even one that
    arrived later without reopening it (resolved in next release); an unresolved group in the
    same state keeps what is not expired."""
    await ingest(clocked, shop, event(1), event(2))
    groups = await stored_groups(clocked)
    await resolve_group(
        sessions=clocked.database.sessions,
        group_id=groups["Error1"].id,  # type: ignore[arg-type]
        in_next_release=True,
        now=clock.at(1).now,
    )
    clock.at(45)
    late = DAY0 + timedelta(hours=1)  # the client's clock says day 0
    await ingest(clocked, shop, event(1, at=late), event(2, at=late))
    groups = await stored_groups(clocked)
    assert groups["Error1"].status == GroupStatus.RESOLVED

    clock.at(70)  # the cutoff (30 days, the server default here) is day 40
    [planned] = (await cleanup(clocked, clock, dry_run=True)).runs
    assert (planned.status, planned.events_deleted, planned.groups_deleted) == ("planned", 3, 1)
    assert len(await stored_events(clocked)) == 4

    [run] = (await cleanup(clocked, clock)).runs
    assert (run.status, run.events_deleted, run.groups_deleted) == ("ok", 3, 1)
    remaining = await stored_events(clocked)
    assert [(e.exception_type, e.received_at) for e in remaining] == [
        ("Error2", DAY0 + timedelta(days=45))
    ]
    assert set(await stored_groups(clocked)) == {"Error2"}


async def test_an_event_arriving_after_the_selection_is_kept(
    clocked: Runtime, shop: CreatedProject, clock: Clock
):
    """Deletion goes by the ids selected: a group that gets a new event meanwhile stays."""
    await ingest(clocked, shop, event(1))
    clock.at(40)

    def arrive(progress: object) -> None:
        # Called after the first delete batch: ingest a new event of the same group.
        if not arrived:
            arrived.append(asyncio.ensure_future(ingest(clocked, shop, event(1))))

    arrived: list[asyncio.Future[None]] = []
    [run] = (await cleanup(clocked, clock, progress=arrive)).runs
    await asyncio.gather(*arrived)
    assert run.events_deleted == 1
    # Whichever came first, nothing acknowledged is lost and no event is left groupless.
    events = await stored_events(clocked)
    groups = await stored_groups(clocked)
    assert [e.received_at for e in events] == [clock.now]
    assert set(groups) == {"Error1"}
    assert events[0].group_id == groups["Error1"].id


async def test_two_runners_at_once_only_one_runs(
    db_settings: Settings, clocked: Runtime, shop: CreatedProject, clock: Clock
):
    await ingest(clocked, shop, event(1), event(2))
    clock.at(40)
    # A second process: its own engine on the same database.
    other = await Runtime.start(db_settings, clock=clock)
    try:
        async with CleanupLock(other.database, db_settings).hold() as held:
            assert held
            blocked = await cleanup(clocked, clock)
            assert blocked.skipped and blocked.runs == []
        assert len(await stored_events(clocked)) == 2

        first, second = await asyncio.gather(
            cleanup(clocked, clock, only_if_due=True), cleanup(other, clock, only_if_due=True)
        )
        # One ran; the other either found the lock held or the run already done.
        assert sorted([len(first.runs), len(second.runs)]) == [0, 1]
        async with clocked.database.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(RetentionRun)) == 1
        assert await stored_events(clocked) == []

        # Due again only after the interval.
        clock.now += timedelta(seconds=db_settings.retention_interval_seconds - 1)
        assert (await cleanup(other, clock, only_if_due=True)).runs == []
        clock.now += timedelta(seconds=1)
        assert len((await cleanup(other, clock, only_if_due=True)).runs) == 1
    finally:
        await other.stop()


async def test_a_run_cut_short_is_marked_interrupted(
    clocked: Runtime, shop: CreatedProject, clock: Clock
):
    async with clocked.database.write_sessions.begin() as session:
        session.add(RetentionRun(project_id=shop.project.id, started_at=DAY0, status="running"))
    [run] = (await cleanup(clocked, clock.at(1))).runs
    page = await list_retention_runs(sessions=clocked.database.sessions, project_id=shop.project.id)
    assert [(r.id, r.status) for r in page.items] == [(run.run_id, "ok"), (1, "failed")]
    assert page.items[1].error is not None and "interrupted" in page.items[1].error


async def test_old_run_records_are_pruned(clocked: Runtime, shop: CreatedProject, clock: Clock):
    await cleanup(clocked, clock)
    await cleanup(clocked, clock.at(31))  # RETENTION_DAYS is 30 here
    page = await list_retention_runs(sessions=clocked.database.sessions)
    assert [r.started_at for r in page.items] == [clock.now]


async def test_the_server_runs_the_task_in_its_lifespan(db_settings: Settings, clock: Clock):
    runtime = await Runtime.start(db_settings, clock=clock)
    try:
        project = await create_project(sessions=runtime.database.sessions, name="Old")
        await ingest(runtime, project, event(1))
    finally:
        await runtime.stop()
    clock.at(31)

    # The first tick comes one interval (here its least, a second) after start.
    ticking = db_settings.model_copy(update={"retention_interval_seconds": 1.0})
    app = create_app(ticking, runtime_options={"clock": clock})
    async with LifespanManager(app):
        await app.state.retention_cleanup.wait_for_ticks(1)
        page = await list_retention_runs(sessions=app.state.runtime.database.sessions)
        assert [(r.status, r.events_deleted, r.groups_deleted) for r in page.items] == [
            ("ok", 1, 1)
        ]


async def test_the_task_can_be_switched_off(settings: Settings):
    app = create_app(settings.model_copy(update={"retention_enabled": False}))
    async with LifespanManager(app):
        assert app.state.retention_cleanup is None
