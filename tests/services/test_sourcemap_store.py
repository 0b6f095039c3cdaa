"""The source map store and the per-process cache ingest reads it through."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.domain.event import EventIn
from app.errors import InvalidInput
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
