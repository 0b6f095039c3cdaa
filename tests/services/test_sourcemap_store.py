"""The source map store and the per-process cache ingest reads it through."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event

from app.domain.event import EventIn
from app.errors import InvalidInput, NotFound
from app.models import SourceMap
from app.services import sourcemaps as service
from app.services.keys import CreatedProject

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sourcemaps"
BUNDLE_URL = "https://shop.example.com/static/app.min.js"


def map_bytes(build: str = "esbuild") -> bytes:
    return (FIXTURES / build / "app.min.js.map").read_bytes()


def js_event(release: str | None) -> EventIn:
    return EventIn(raw_stacktrace=(FIXTURES / "esbuild" / "stack.txt").read_text(), release=release)


async def test_maps_for_matches_urls_by_specificity(runtime, project: CreatedProject):
    sessions = runtime.database.sessions
    project_id = project.project.id
    await service.store_source_map(
        sessions=sessions, project_id=project_id, release="1", url="app.min.js", content=map_bytes()
    )
    exact = await service.store_source_map(
        sessions=sessions,
        project_id=project_id,
        release="1",
        url=BUNDLE_URL,
        content=map_bytes("terser"),
    )
    found = await service.maps_for(
        sessions=sessions,
        project_id=project_id,
        release="1",
        urls=[BUNDLE_URL, "https://cdn.example.com/js/app.min.js", "https://x/vendor.js"],
    )
    assert set(found) == {BUNDLE_URL, "https://cdn.example.com/js/app.min.js"}
    # The exact URL wins over the bare name.
    assert (
        found[BUNDLE_URL].sources == service.LoadedSourceMap.from_bytes(map_bytes("terser")).sources
    )
    assert exact.size == len(map_bytes("terser"))
    other_release = await service.maps_for(
        sessions=sessions, project_id=project_id, release="2", urls=[BUNDLE_URL]
    )
    assert other_release == {}


async def test_events_without_release_or_maps_cost_no_lookup(runtime, project: CreatedProject):
    sessions = runtime.database.sessions
    project_id = project.project.id
    events = [js_event(None), js_event("no-maps"), EventIn(message="hello", release="1")]
    assert await service.source_maps_for_events(
        sessions=sessions, project_id=project_id, events=events
    ) == [{}, {}, {}]
    cache = service.cache_for(sessions)
    assert list(cache.indexes) == [(project_id, "no-maps")]
    await service.store_source_map(
        sessions=sessions, project_id=project_id, release="1", url=BUNDLE_URL, content=map_bytes()
    )
    maps = await service.source_maps_for_events(
        sessions=sessions, project_id=project_id, events=[js_event("1")]
    )
    assert list(maps[0]) == [BUNDLE_URL]


async def test_another_process_is_seen_within_the_ttl(runtime, project: CreatedProject):
    """A map stored by another process (here: a row written behind the service's back)
    is used once this process's index of the release expires."""
    sessions = runtime.database.sessions
    project_id = project.project.id
    now = [1000.0]
    cache = service.cache_for(sessions)
    cache.clock = lambda: now[0]
    assert (
        await service.maps_for(
            sessions=sessions, project_id=project_id, release="1", urls=[BUNDLE_URL]
        )
        == {}
    )
    async with sessions.begin() as session:
        content = map_bytes()
        session.add(
            SourceMap(
                project_id=project_id,
                release="1",
                url=BUNDLE_URL,
                content=content,
                size=len(content),
            )
        )
    still = await service.maps_for(
        sessions=sessions, project_id=project_id, release="1", urls=[BUNDLE_URL]
    )
    assert still == {}
    now[0] += service.INDEX_TTL + 1
    later = await service.maps_for(
        sessions=sessions, project_id=project_id, release="1", urls=[BUNDLE_URL]
    )
    assert list(later) == [BUNDLE_URL]


async def test_requests_that_miss_together_share_one_query(runtime, project: CreatedProject):
    """Under load every request of the first moments misses the index at once, and again
    whenever an entry expires: they wait for one query, and a waiter that leaves (its
    client hung up) leaves it to the others."""
    sessions = runtime.database.sessions
    project_id = project.project.id
    await service.store_source_map(
        sessions=sessions, project_id=project_id, release="1", url=BUNDLE_URL, content=map_bytes()
    )
    queries: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM source_map" in statement:
            queries.append(statement)

    engine = runtime.database.engine.sync_engine
    sa_event.listen(engine, "before_cursor_execute", count)
    try:
        service.cache_for(sessions).forget(project_id, "1")
        lookups = [
            asyncio.ensure_future(service._release_index(sessions, project_id, "1"))
            for _ in range(20)
        ]
        await asyncio.sleep(0)
        lookups[0].cancel()
        indexes = await asyncio.gather(*lookups[1:])
    finally:
        sa_event.remove(engine, "before_cursor_execute", count)
    assert len(queries) == 1
    assert all(index == indexes[0] and len(index) == 1 for index in indexes)
    assert lookups[0].cancelled()
    assert service.cache_for(sessions).reading == {}


async def test_a_query_under_way_when_a_map_is_stored_is_not_cached(
    runtime, project: CreatedProject
):
    """An upload drops the release's entry at once; a query that started before it may have
    read the old rows, so it answers its waiters but stores nothing, and the next
    request reads again and sees the new map."""
    sessions = runtime.database.sessions
    project_id = project.project.id
    cache = service.cache_for(sessions)
    before = asyncio.ensure_future(service._release_index(sessions, project_id, "1"))
    await asyncio.sleep(0)  # its query has started
    assert (project_id, "1") in cache.reading
    cache.forget(project_id, "1")  # as an upload does
    assert await before == {}
    assert (project_id, "1") not in cache.indexes
    await service.store_source_map(
        sessions=sessions, project_id=project_id, release="1", url=BUNDLE_URL, content=map_bytes()
    )
    maps = await service.maps_for(
        sessions=sessions, project_id=project_id, release="1", urls=[BUNDLE_URL]
    )
    assert list(maps) == [BUNDLE_URL]


async def test_parsed_maps_are_reused_and_bounded(runtime, project: CreatedProject, monkeypatch):
    sessions = runtime.database.sessions
    project_id = project.project.id
    monkeypatch.setattr(service, "MAX_LOADED", 2)
    for release in ("1", "2", "3"):
        await service.store_source_map(
            sessions=sessions,
            project_id=project_id,
            release=release,
            url=BUNDLE_URL,
            content=map_bytes(),
        )
    first = await service.maps_for(
        sessions=sessions, project_id=project_id, release="1", urls=[BUNDLE_URL]
    )
    again = await service.maps_for(
        sessions=sessions, project_id=project_id, release="1", urls=[BUNDLE_URL]
    )
    assert again[BUNDLE_URL] is first[BUNDLE_URL]
    for release in ("2", "3"):
        await service.maps_for(
            sessions=sessions, project_id=project_id, release=release, urls=[BUNDLE_URL]
        )
    assert len(service.cache_for(sessions).loaded) == 2


async def test_caches_are_per_database(runtime, project: CreatedProject, settings, tmp_path):
    """Two servers in one process, each with its own database, share nothing."""
    from app.services.runtime import Runtime

    other_settings = settings.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"}
    )
    other = await Runtime.start(other_settings)
    try:
        assert service.cache_for(other.database.sessions) is not service.cache_for(
            runtime.database.sessions
        )
    finally:
        await other.stop()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"release": ""}, "release"),
        ({"release": "a\x00b"}, "release"),
        ({"url": "   "}, "url"),
        ({"name": "n" * 1001}, "name"),
        ({"content": b'{"version": 3, "mappings": 5}'}, "sourcemap"),
    ],
)
async def test_store_refuses_naming_the_field(runtime, project: CreatedProject, changes, field):
    arguments = {"release": "1", "url": BUNDLE_URL, "content": map_bytes(), "name": ""} | changes
    with pytest.raises(InvalidInput) as refused:
        await service.store_source_map(
            sessions=runtime.database.sessions, project_id=project.project.id, **arguments
        )
    assert refused.value.field == field


async def test_storing_a_map_keeps_no_reference_to_it(runtime, project: CreatedProject):
    """Nothing holds the map's bytes once stored (SQLAlchemy caches each statement's first
    compiled form, and with it the values put into that statement: a first 30 MiB map
    stayed in memory for good)."""
    content = map_bytes()
    references = sys.getrefcount(content)
    for _ in range(2):  # stored, then replaced
        await service.store_source_map(
            sessions=runtime.database.sessions,
            project_id=project.project.id,
            release="1",
            url=BUNDLE_URL,
            content=content,
        )
    gc.collect()
    assert sys.getrefcount(content) == references


async def test_storing_for_a_missing_project_is_not_found(runtime):
    with pytest.raises(NotFound) as refused:
        await service.store_source_map(
            sessions=runtime.database.sessions,
            project_id=987654,
            release="1",
            url=BUNDLE_URL,
            content=map_bytes(),
        )
    assert refused.value.field == "project"


async def test_concurrent_uploads_of_one_url_leave_one_map(runtime, project: CreatedProject):
    """Two uploads of one URL at once leave one map, whichever stored last."""
    sessions = runtime.database.sessions
    stored = await asyncio.gather(
        *(
            service.store_source_map(
                sessions=sessions,
                project_id=project.project.id,
                release="1",
                url=BUNDLE_URL,
                content=map_bytes(build),
            )
            for build in ("esbuild", "terser")
        )
    )
    assert stored[0].id == stored[1].id
    listed = await service.list_source_maps(
        sessions=sessions, project_id=project.project.id, release="1"
    )
    assert [row.id for row in listed] == [stored[0].id]
