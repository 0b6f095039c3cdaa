"""The ingest service: group commit, exact counts under concurrency, dedupe, regressions,
ignore conditions, and publishing only what was committed."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.domain.event import AccountIn, EventIn, EventType, ExceptionIn, Frame, UserIn
from app.errors import InvalidInput
from app.models import AffectedUser, Event, Group, GroupStatus, GroupUser
from app.pubsub import EVENT_CAPTURED, GROUP_CREATED, GROUP_UPDATED
from app.services.ingest import PreparedEvent, ingest_events
from app.services.issues import ignore_group, resolve_group
from app.services.keys import CreatedProject
from app.services.runtime import Runtime

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def error_event(
    signature: int,
    *,
    event_id: str | None = None,
    line: int = 10,
    user: str | None = None,
    account: str | None = None,
    release: str | None = None,
    at: datetime = T0,
) -> EventIn:
    """An exception whose stack differs per `signature` (the function names)."""
    frames = [
        Frame(filename="app.js", function=f"outer{signature}", lineno=line, in_app=True),
        Frame(filename="lib.js", function=f"middle{signature}", lineno=line + 1, in_app=True),
        Frame(filename="util.js", function=f"inner{signature}", lineno=line + 2, in_app=True),
    ]
    extra = {"event_id": event_id} if event_id else {}
    return EventIn(
        **extra,
        timestamp=at,
        exceptions=[ExceptionIn(type="TypeError", value=f"boom {signature}", frames=frames)],
        user=UserIn(id=user) if user else None,
        account=AccountIn(id=account, name=f"Account {account}") if account else None,
        release=release,
    )


async def ingest(runtime: Runtime, project: CreatedProject, *events: EventIn):
    return await ingest_events(writer=runtime.writer, project=project.project, events=list(events))


async def test_concurrent_events_are_counted_exactly(runtime: Runtime, project: CreatedProject):
    # 200 concurrent callers, 20 signatures, 10 events each; users u0..u4 per signature,
    # each user twice, and two accounts per signature.
    events = [
        error_event(
            i % 20,
            line=i,
            user=f"u{(i // 20) % 5}",
            account=f"a{(i // 20) % 2}",
            at=T0 + timedelta(seconds=i),
        )
        for i in range(200)
    ]
    results = await asyncio.gather(*(ingest(runtime, project, event) for event in events))

    assert [len(r) for r in results] == [1] * 200
    statuses = [r[0].status for r in results]
    assert statuses.count("duplicate") == 0
    group_ids = {r[0].group_id for r in results}
    assert len(group_ids) == 20
    # Far fewer transactions than callers: concurrent requests share a commit.
    assert runtime.writer.batches_written < 200

    async with runtime.database.sessions() as session:
        groups = (await session.scalars(select(Group))).all()
        assert len(groups) == 20
        for group in groups:
            assert group.count == 10
            assert group.user_count == 5
            assert group.account_count == 2
            assert group.status == GroupStatus.UNRESOLVED
        assert await session.scalar(select(func.count()).select_from(Event)) == 200
        users = (await session.scalars(select(AffectedUser))).all()
        assert sorted(u.external_id for u in users) == ["u0", "u1", "u2", "u3", "u4"]
        assert all(u.event_count == 40 for u in users)
        links = (await session.scalars(select(GroupUser))).all()
        assert len(links) == 100
        assert all(link.event_count == 2 for link in links)
        first = await session.scalar(select(Group).where(Group.id == results[0][0].group_id))
        assert first is not None
        assert first.first_seen == T0
        assert first.last_seen == T0 + timedelta(seconds=180)
    # Exactly one "created" per group; all others join an existing group... or were
    # written in the batch that created it, which counts as created too.
    assert {r[0].group_id for r in results if r[0].status == "created"} == group_ids


async def test_moving_a_line_keeps_the_group(runtime: Runtime, project: CreatedProject):
    [a] = await ingest(runtime, project, error_event(1, line=10))
    [b] = await ingest(runtime, project, error_event(1, line=99))
    [c] = await ingest(runtime, project, error_event(2, line=10))
    assert a.group_id == b.group_id
    assert (a.status, b.status) == ("created", "existing")
    assert c.group_id != a.group_id


async def test_repeated_event_id_is_stored_once(runtime: Runtime, project: CreatedProject):
    [first] = await ingest(runtime, project, error_event(1, event_id="evt-1"))
    [again] = await ingest(runtime, project, error_event(1, event_id="evt-1"))
    # And twice in one batch, from two concurrent callers.
    twin = await asyncio.gather(
        ingest(runtime, project, error_event(3, event_id="evt-2")),
        ingest(runtime, project, error_event(3, event_id="evt-2")),
    )
    assert again.status == "duplicate"
    assert (again.id, again.group_id) == (first.id, first.group_id)
    assert sorted(r[0].status for r in twin) == ["created", "duplicate"]
    async with runtime.database.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Event)) == 2
        group = await session.get(Group, first.group_id)
        assert group is not None and group.count == 1


async def test_resolved_group_reopens_as_regression(runtime: Runtime, project: CreatedProject):
    [first] = await ingest(runtime, project, error_event(1))
    sessions = runtime.database.sessions
    await resolve_group(sessions=sessions, group_id=first.group_id)
    [again] = await ingest(runtime, project, error_event(1, at=T0 + timedelta(hours=1)))
    assert again.regression is True
    async with sessions() as session:
        group = await session.get(Group, first.group_id)
        assert group is not None
        assert group.status == GroupStatus.UNRESOLVED
        assert group.is_regression is True
        assert group.resolved_at is None
        assert group.count == 2


async def test_resolved_in_next_release(runtime: Runtime, project: CreatedProject):
    [first] = await ingest(runtime, project, error_event(1, release="1.0"))
    sessions = runtime.database.sessions
    await resolve_group(sessions=sessions, group_id=first.group_id, in_next_release=True)
    [same] = await ingest(runtime, project, error_event(1, release="1.0"))
    assert same.regression is False
    group = await _group(runtime, first.group_id)
    assert group.status == GroupStatus.RESOLVED
    [newer] = await ingest(runtime, project, error_event(1, release="1.1"))
    assert newer.regression is True
    group = await _group(runtime, first.group_id)
    assert (group.status, group.last_release, group.first_release) == ("unresolved", "1.1", "1.0")


async def _group(runtime: Runtime, group_id: int) -> Group:
    async with runtime.database.sessions() as session:
        group = await session.get(Group, group_id)
    assert group is not None
    return group


async def test_ignored_until_count_goes_back_to_unresolved(
    runtime: Runtime, project: CreatedProject
):
    [first] = await ingest(runtime, project, error_event(1))
    await ignore_group(sessions=runtime.database.sessions, group_id=first.group_id, until_count=2)
    await ingest(runtime, project, error_event(1))
    assert (await _group(runtime, first.group_id)).status == GroupStatus.IGNORED
    await ingest(runtime, project, error_event(1))
    group = await _group(runtime, first.group_id)
    assert group.status == GroupStatus.UNRESOLVED
    assert group.ignore_until_count is None


async def test_ignored_until_user_count(runtime: Runtime, project: CreatedProject):
    [first] = await ingest(runtime, project, error_event(1, user="a"))
    await ignore_group(
        sessions=runtime.database.sessions, group_id=first.group_id, until_user_count=2
    )
    await ingest(runtime, project, error_event(1, user="a"), error_event(1, user="b"))
    assert (await _group(runtime, first.group_id)).status == GroupStatus.IGNORED
    await ingest(runtime, project, error_event(1, user="c"))
    assert (await _group(runtime, first.group_id)).status == GroupStatus.UNRESOLVED


async def test_ignored_until_time(settings, project: CreatedProject, runtime: Runtime):
    [first] = await ingest(runtime, project, error_event(1))
    now = datetime.now(UTC)
    await ignore_group(
        sessions=runtime.database.sessions,
        group_id=first.group_id,
        until=now + timedelta(hours=1),
        now=now,
    )
    await ingest(runtime, project, error_event(1))
    assert (await _group(runtime, first.group_id)).status == GroupStatus.IGNORED

    # A writer whose clock is two hours ahead sees the ignore period over.
    later = await Runtime.start(settings, clock=lambda: now + timedelta(hours=2))
    try:
        await ingest_events(writer=later.writer, project=project.project, events=[error_event(1)])
    finally:
        await later.stop()
    assert (await _group(runtime, first.group_id)).status == GroupStatus.UNRESOLVED


async def test_publishes_ids_after_commit(runtime: Runtime, project: CreatedProject):
    received: dict[str, list[dict]] = {GROUP_CREATED: [], EVENT_CAPTURED: [], GROUP_UPDATED: []}

    async def listen(channel: str, ready: asyncio.Event, count: int) -> None:
        async with runtime.pubsub.subscribe(channel) as subscription:
            ready.set()
            while True:
                _, message = await subscription.get()
                # What is published is already committed: a fresh session sees it.
                async with runtime.database.sessions() as session:
                    if channel == EVENT_CAPTURED:
                        assert await session.get(Event, message["event_id"]) is not None
                    else:
                        assert await session.get(Group, message["group_id"]) is not None
                received[channel].append(message)
                if len(received[channel]) == count:
                    return

    readies = {channel: asyncio.Event() for channel in received}
    counts = {GROUP_CREATED: 1, EVENT_CAPTURED: 2, GROUP_UPDATED: 1}
    tasks = [
        asyncio.create_task(listen(channel, readies[channel], counts[channel]))
        for channel in received
    ]
    await asyncio.gather(*(ready.wait() for ready in readies.values()))
    results = await ingest(runtime, project, error_event(5), error_event(5))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)

    group_id = results[0].group_id
    project_id = project.project.id
    assert received[GROUP_CREATED] == [{"group_id": group_id, "project_id": project_id}]
    assert sorted(m["event_id"] for m in received[EVENT_CAPTURED]) == sorted(r.id for r in results)
    assert received[GROUP_UPDATED] == [
        {
            "group_id": group_id,
            "project_id": project_id,
            "kind": "NEW_EVENT",
            "event_id": min(r.id for r in results),
        }
    ]


async def test_raw_stack_text_is_parsed_into_frames(runtime: Runtime, project: CreatedProject):
    stack = (
        "TypeError: Cannot read properties of undefined (reading 'foo')\n"
        "    at processData (https://example.com/static/app.js:42:15)\n"
        "    at handleClick (https://example.com/static/app.js:120:5)"
    )
    event = EventIn(exceptions=[ExceptionIn(type="TypeError")], raw_stacktrace=stack)
    [result] = await ingest(runtime, project, event)
    async with runtime.database.sessions() as session:
        stored = await session.get(Event, result.id)
        group = await session.get(Group, result.group_id)
    assert stored is not None and group is not None
    assert stored.raw_stacktrace == stack
    assert stored.exception_type == "TypeError"
    assert stored.exception_value == "Cannot read properties of undefined (reading 'foo')"
    frames = stored.exceptions[0]["frames"]  # type: ignore[index]
    assert [f["function"] for f in frames] == ["handleClick", "processData"]
    assert [f["lineno"] for f in frames] == [120, 42]
    assert group.title.startswith("TypeError: Cannot read properties of undefined")


async def test_message_events_group_by_parametrised_message(
    runtime: Runtime, project: CreatedProject
):
    one = EventIn(type=EventType.MESSAGE, message="Timeout after 30s talking to 10.0.0.1")
    two = EventIn(type=EventType.MESSAGE, message="Timeout after 45s talking to 10.0.0.7")
    other = EventIn(type=EventType.MESSAGE, message="Disk full on /var")
    [a, b, c] = await ingest(runtime, project, one, two, other)
    assert a.group_id == b.group_id != c.group_id


async def test_exception_event_without_content_is_refused(
    runtime: Runtime, project: CreatedProject
):
    with pytest.raises(InvalidInput) as caught:
        await ingest(runtime, project, EventIn(type=EventType.EXCEPTION))
    assert caught.value.field == "exception"


async def test_one_bad_caller_does_not_fail_the_others(runtime: Runtime, project: CreatedProject):
    # A project id that does not exist violates a foreign key inside the transaction.
    from app.services.ingest import prepare_event

    bad = prepare_event(error_event(1), strategy="frames", project_id=999_999)
    outcomes = await asyncio.gather(
        runtime.writer.submit(project_id=999_999, events=[bad]),
        ingest(runtime, project, error_event(2)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], Exception)
    assert outcomes[1][0].status == "created"  # type: ignore[index]


async def test_an_older_event_arriving_later_moves_first_seen_back(
    runtime: Runtime, project: CreatedProject
):
    """First seen is the earliest occurrence, whatever order the events arrive in (a
    queued SDK, a client's clock); last seen stays the latest."""
    later = T0 + timedelta(hours=3)
    [first] = await ingest_events(
        writer=runtime.writer, project=project.project, events=[error_event(1, at=later, user="u1")]
    )
    await ingest_events(
        writer=runtime.writer, project=project.project, events=[error_event(1, at=T0, user="u1")]
    )
    async with runtime.database.sessions() as session:
        group = await session.get(Group, first.group_id)
        user = (await session.scalars(select(AffectedUser))).one()
        link = (await session.scalars(select(GroupUser))).one()
    assert group is not None and group.count == 2
    assert (group.first_seen, group.last_seen) == (T0, later)
    assert (user.first_seen, user.last_seen) == (T0, later)
    assert (link.first_seen, link.last_seen) == (T0, later)


async def test_the_writer_keeps_no_batch_once_written(runtime: Runtime, project: CreatedProject):
    """Events, their payloads and callers' futures are let go once their batch is
    written, not kept until the next batch comes (an idle process held its last batch)."""
    ids = {f"writer-let-go-{i}" for i in range(20)}
    await asyncio.gather(
        *(
            ingest(runtime, project, error_event(i, event_id=event_id))
            for i, event_id in enumerate(ids)
        )
    )
    gc.collect()
    kept = [
        o
        for o in gc.get_objects()
        if (isinstance(o, EventIn) and o.event_id in ids)
        or (isinstance(o, PreparedEvent) and o.event.event_id in ids)
    ]
    assert kept == []


async def test_the_writers_lookups_read_what_sqlalchemy_reads(
    runtime: Runtime, project: CreatedProject
):
    """On SQLite the writer looks groups, people and stored events up through the driver:
    the same rows and values, dates and flags typed, as SQLAlchemy's query gives."""
    from sqlalchemy import select as sa_select

    from app.services import ingest as service

    engine = runtime.database.sync_writer
    if engine is None:
        pytest.skip("the writer has no driver path on this database")
    [ignored] = await ingest(runtime, project, error_event(1, user="u1", release="1.0"))
    [resolved] = await ingest(runtime, project, error_event(2, user="u2"))
    await ingest(runtime, project, error_event(3))
    now = datetime.now(UTC).replace(microsecond=0)
    sessions = runtime.database.sessions
    await ignore_group(sessions=sessions, group_id=ignored.group_id, until=now + timedelta(hours=1))
    await resolve_group(sessions=sessions, group_id=resolved.group_id, in_next_release=True)
    project_id = project.project.id
    assert project_id is not None

    def read() -> tuple[dict, dict, list, dict, dict]:
        with engine.connect() as conn:
            fingerprints = list(conn.scalars(sa_select(Group.fingerprint)))
            via_driver: dict = {}
            service._select_groups(conn, [(project_id, fp) for fp in fingerprints], via_driver)
            columns = [getattr(Group, name) for name in service.GROUP_STATE_COLUMNS]
            via_sqlalchemy = {
                (project_id, row[0]): dict(zip(service.GROUP_STATE_COLUMNS, row[1:], strict=True))
                for row in conn.execute(sa_select(Group.fingerprint, *columns))
            }
            people: dict = {}
            service._select_people(
                conn, service.USERS, [(project_id, "u1"), (project_id, "nobody")], people
            )
            stored = sorted(
                service._lookup(
                    conn,
                    service.EVENTS,
                    project_id,
                    "event_id",
                    [ignored.event_id, resolved.event_id, "0" * 32],
                    ("event_id", "id", "group_id"),
                    lambda: None,
                )
            )
            users = dict(conn.execute(sa_select(AffectedUser.external_id, AffectedUser.id)).all())
            return via_driver, via_sqlalchemy, stored, people, users

    via_driver, via_sqlalchemy, stored, people, users = await asyncio.to_thread(read)
    assert len(via_driver) == 3
    assert via_driver == via_sqlalchemy
    for key, row in via_driver.items():
        assert {name: type(value) for name, value in row.items()} == {
            name: type(value) for name, value in via_sqlalchemy[key].items()
        }
    ignored_row = next(row for row in via_driver.values() if row["id"] == ignored.group_id)
    assert ignored_row["status"] == GroupStatus.IGNORED
    assert ignored_row["ignore_until"] == now + timedelta(hours=1)
    resolved_row = next(row for row in via_driver.values() if row["id"] == resolved.group_id)
    assert resolved_row["resolved_at"] is not None and resolved_row["is_regression"] is False
    assert people == {(project_id, "u1"): users["u1"]}
    assert stored == sorted(
        [
            (ignored.event_id, ignored.id, ignored.group_id),
            (resolved.event_id, resolved.id, resolved.group_id),
        ]
    )
