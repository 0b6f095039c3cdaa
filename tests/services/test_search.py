"""SQLite's full-text index: the writer adds each event's row, the delete trigger removes
it; both must compute the same stack text, or a deleted event's words stay behind."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa

import app
from app.domain.event import EventIn, ExceptionIn, Frame
from app.services.events import EventFilter, list_events
from app.services.ingest import ingest_events
from app.services.issues import delete_group
from app.services.keys import CreatedProject
from app.services.runtime import Runtime
from app.services.search import sqlite_stack_text


def migration(name: str) -> ModuleType:
    """A migration module (their file names start with a date, so no import statement)."""
    [path] = (Path(app.__file__).parent / "migrations" / "versions").glob(f"*_{name}_*.py")
    spec = importlib.util.spec_from_file_location(f"migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The stack text of each stored row as the delete trigger of migration 0003 computes it.
STORED_STACK = sa.text(f"SELECT id, {migration('0003')._sqlite_stack('event')} FROM event")


def varied_events() -> list[EventIn]:
    return [
        EventIn(
            exceptions=[
                ExceptionIn(
                    type="KeyError",
                    value="sku",
                    frames=[
                        Frame(filename="shop/cart.py", module="shop.cart", function="total"),
                        Frame(function="lookup_sku"),  # no module, no file
                        Frame(filename="", module="", function=""),
                        Frame(filename="straße.py", module="ünïcode", function="grüße"),
                    ],
                )
            ]
        ),
        # A chain: the cause's frames first, as stored.
        EventIn(
            exceptions=[
                ExceptionIn(type="OSError", frames=[Frame(function="connect", module="db")]),
                ExceptionIn(type="RuntimeError", frames=[Frame(function="checkout")]),
            ]
        ),
        EventIn(exceptions=[ExceptionIn(type="ValueError", value="no frames")]),
        EventIn(type="message", message="disk almost full on volume quartz"),
        EventIn(
            message="from text",
            raw_stacktrace='Traceback (most recent call last):\n  File "job.py", line 3, '
            "in nightly\nZeroDivisionError: division by zero",
        ),
    ]


async def test_the_writers_stack_text_is_the_delete_triggers(
    runtime: Runtime, project: CreatedProject
):
    events = varied_events()
    results = await ingest_events(writer=runtime.writer, project=project.project, events=events)
    async with runtime.database.sessions() as session:
        stored = dict((await session.execute(STORED_STACK)).all())
    # What the writer indexed for each event is what the trigger will compute.
    assert [stored[result.id] for result in results] == [
        sqlite_stack_text(event) for event in events
    ]


async def test_deleted_events_leave_nothing_in_the_index(runtime: Runtime, project: CreatedProject):
    results = await ingest_events(
        writer=runtime.writer, project=project.project, events=varied_events()
    )
    sessions = runtime.database.sessions
    assert project.project.id is not None

    async def found(text: str) -> int:
        where = EventFilter(project_id=project.project.id, search=text)
        return len((await list_events(sessions=sessions, where=where)).items)

    assert await found("lookup_sku") == 1
    assert await found("grüße") == 1
    assert await found("quartz") == 1
    assert await found("nightly") == 1
    for group_id in {result.group_id for result in results}:
        await delete_group(sessions=sessions, group_id=group_id)
    async with sessions() as session:
        await session.execute(
            sa.text("CREATE VIRTUAL TABLE temp.terms USING fts5vocab(main, event_fts, 'row')")
        )
        left = (await session.execute(sa.text("SELECT term FROM temp.terms"))).scalars().all()
    assert left == []
