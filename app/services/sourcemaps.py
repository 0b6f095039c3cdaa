"""Source maps per project and release: store, list and delete them, and find the ones
an incoming event's frames need.

A map is stored for one minified file of one release, under the URL or name its frames
show (`url`; see `app.domain.sourcemap.stored_key` for how full URLs, `~/paths`, paths
and bare names match). Uploading again for the same project, release and URL replaces
the map. Maps are checked when uploaded (`LoadedSourceMap.from_bytes`), so a map that
symbolic cannot read is refused then, not discovered at ingest.

Ingest asks `source_maps_for_events` before fingerprinting. It must stay cheap for the
events that need no map, which are most of them, so each process keeps a small cache:

- per (project, release), which URLs have maps: read once, then trusted for
  `INDEX_TTL` seconds. A release without maps is remembered too, so a JavaScript event
  of such a release costs no query. Requests that miss it together wait for one query.
  An upload or delete in this process drops the entry at once (and a query under way
  then stores nothing); another process sees the change within `INDEX_TTL`.
- the parsed maps themselves, the `MAX_LOADED` most recently used, keyed by map id and
  upload time (a replaced map is parsed again).

The cache is per database (per session factory), so two servers in one process (tests)
never see each other's maps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.event import EventIn
from app.domain.sourcemap import (
    InvalidSourceMap,
    LoadedSourceMap,
    frame_urls,
    lookup_keys,
    stored_key,
)
from app.errors import InvalidInput, NotFound, PayloadTooLarge
from app.models import SourceMap, utcnow
from app.services.common import MAX_INT_COLUMN, PerDatabase, Sessions

log = logging.getLogger(__name__)

MAX_SOURCE_MAP_BYTES = 40 * 1024 * 1024
INDEX_TTL = 30.0
MAX_LOADED = 64
MAX_RELEASE_LENGTH = 200
MAX_URL_LENGTH = 1000

TABLE = SourceMap.__table__


@dataclass(frozen=True)
class StoredSourceMap:
    """A stored map without its content: what listings and answers show."""

    id: int
    project_id: int
    release: str
    url: str
    name: str
    size: int
    created_at: datetime


_COLUMNS = (
    TABLE.c.id,
    TABLE.c.project_id,
    TABLE.c.release,
    TABLE.c.url,
    TABLE.c.name,
    TABLE.c.size,
    TABLE.c.created_at,
)


def _stored(row: sa.Row) -> StoredSourceMap:  # type: ignore[type-arg]
    return StoredSourceMap(**row._mapping)


# --- the per-process cache -------------------------------------------------------------

# For each stored key of a release: the map's id and its upload time (its version).
_Index = dict[str, tuple[int, datetime]]


@dataclass
class _Cache:
    clock: Callable[[], float] = time.monotonic
    indexes: dict[tuple[int, str], tuple[float, _Index]] = field(default_factory=dict)
    # The index queries under way: requests that miss the cache together wait for one
    # query instead of each making its own (every request of the first moments under
    # load, and again each time an entry expires).
    reading: dict[tuple[int, str], asyncio.Future[_Index]] = field(default_factory=dict)
    loaded: OrderedDict[tuple[int, datetime], LoadedSourceMap | None] = field(
        default_factory=OrderedDict
    )

    def forget(self, project_id: int, release: str) -> None:
        self.indexes.pop((project_id, release), None)
        # A query under way may predate the change: the next request makes a new one.
        self.reading.pop((project_id, release), None)


# The cache of the database behind a session factory (tests set its clock).
cache_for = PerDatabase(_Cache)


async def _release_index(sessions: Sessions, project_id: int, release: str) -> _Index:
    cache = cache_for(sessions)
    key = (project_id, release)
    cached = cache.indexes.get(key)
    if cached is not None and cached[0] > cache.clock():
        return cached[1]
    reading = cache.reading.get(key)
    if reading is None:
        reading = cache.reading[key] = asyncio.ensure_future(
            _read_index(sessions, cache, project_id, release)
        )
        reading.add_done_callback(partial(_read, cache, key))
    # Shielded: a waiter that is cancelled (its client left) leaves the query to the others.
    return await asyncio.shield(reading)


def _read(cache: _Cache, key: tuple[int, str], reading: asyncio.Future[_Index]) -> None:
    if cache.reading.get(key) is reading:
        del cache.reading[key]
    if not reading.cancelled():
        reading.exception()  # its waiters have it; retrieved even when they all left


async def _read_index(sessions: Sessions, cache: _Cache, project_id: int, release: str) -> _Index:
    now = cache.clock()
    async with sessions() as session:
        rows = await session.execute(
            sa.select(TABLE.c.id, TABLE.c.url, TABLE.c.created_at)
            .where(TABLE.c.project_id == project_id, TABLE.c.release == release)
            .order_by(TABLE.c.id)
        )
        # Later uploads win when two URLs come down to the same key.
        index: _Index = {stored_key(url): (map_id, created) for map_id, url, created in rows}
    if cache.reading.get((project_id, release)) is asyncio.current_task():  # not forgotten
        cache.indexes[(project_id, release)] = (now + INDEX_TTL, index)
    return index


async def _loaded(sessions: Sessions, map_id: int, version: datetime) -> LoadedSourceMap | None:
    cache = cache_for(sessions)
    key = (map_id, version)
    if key in cache.loaded:
        cache.loaded.move_to_end(key)
        return cache.loaded[key]
    async with sessions() as session:
        content = await session.scalar(sa.select(TABLE.c.content).where(TABLE.c.id == map_id))
    loaded: LoadedSourceMap | None = None
    if content is not None:
        try:
            # Parsing a large map takes a while: keep the event loop free meanwhile.
            loaded = await asyncio.to_thread(LoadedSourceMap.from_bytes, bytes(content))
        except InvalidSourceMap as exc:
            log.warning("stored source map %s cannot be read: %s", map_id, exc)
    cache.loaded[key] = loaded
    while len(cache.loaded) > MAX_LOADED:
        cache.loaded.popitem(last=False)
    return loaded


# --- lookups for ingest ----------------------------------------------------------------


async def maps_for(
    *, sessions: Sessions, project_id: int, release: str, urls: Iterable[str]
) -> dict[str, LoadedSourceMap]:
    """The maps of `release` for the frame files `urls`, keyed by those URLs; URLs that
    no map covers are left out."""
    index = await _release_index(sessions, project_id, release)
    found: dict[str, LoadedSourceMap] = {}
    if not index:
        return found
    for url in urls:
        entry = next((index[key] for key in lookup_keys(url) if key in index), None)
        if entry is None:
            continue
        loaded = await _loaded(sessions, *entry)
        if loaded is not None:
            found[url] = loaded
    return found


async def source_maps_for_events(
    *, sessions: Sessions, project_id: int, events: Sequence[EventIn]
) -> list[dict[str, LoadedSourceMap]]:
    """For each event, the maps its frames need (empty for most events): events without
    a release or a stack cost nothing, and those of a release without maps no more than
    a cache lookup."""
    answer: list[dict[str, LoadedSourceMap]] = []
    for event in events:
        maps: dict[str, LoadedSourceMap] = {}
        has_stack = event.raw_stacktrace or any(exc.frames for exc in event.exceptions)
        if (
            event.release
            and has_stack
            and await _release_index(sessions, project_id, event.release)
        ):
            urls = frame_urls(event)
            if urls:
                maps = await maps_for(
                    sessions=sessions, project_id=project_id, release=event.release, urls=urls
                )
        answer.append(maps)
    return answer


# --- management ------------------------------------------------------------------------


def _checked_text(value: str, *, field: str, limit: int, required: bool = True) -> str:
    text = value.strip()
    if required and not text:
        raise InvalidInput(f"{field} must not be empty", field=field)
    if len(text) > limit:
        raise InvalidInput(f"{field} is longer than {limit} characters", field=field)
    if "\x00" in text:
        raise InvalidInput(f"{field} must not contain NUL characters", field=field)
    return text


def checked_release(release: str) -> str:
    return _checked_text(release, field="release", limit=MAX_RELEASE_LENGTH)


async def store_source_map(
    *,
    sessions: Sessions,
    project_id: int,
    release: str,
    url: str,
    content: bytes,
    name: str = "",
) -> StoredSourceMap:
    """Store (or replace) the map of `release` for the minified file `url`.

    InvalidInput names the field (`release`, `url`, `name`, `sourcemap`) that is wrong;
    PayloadTooLarge past MAX_SOURCE_MAP_BYTES.
    """
    release = checked_release(release)
    url = _checked_text(url, field="url", limit=MAX_URL_LENGTH)
    name = _checked_text(name, field="name", limit=MAX_URL_LENGTH, required=False)
    if len(content) > MAX_SOURCE_MAP_BYTES:
        raise PayloadTooLarge(f"the source map is larger than {MAX_SOURCE_MAP_BYTES} bytes")
    try:
        await asyncio.to_thread(LoadedSourceMap.from_bytes, content)
    except InvalidSourceMap as exc:
        raise InvalidInput(f"sourcemap: {exc}", field="sourcemap") from None
    # The content goes in at execution, not into the statement: SQLAlchemy's cache of
    # compiled statements keeps the first statement of each shape, values and all.
    values = {
        "name": name,
        "content": sa.bindparam("content"),
        "size": len(content),
        "created_at": utcnow(),
    }
    bound = {"content": content}
    where = (TABLE.c.project_id == project_id, TABLE.c.release == release, TABLE.c.url == url)
    engine: AsyncEngine = sessions.kw["bind"]
    for attempt in range(2):
        try:
            async with engine.connect() as connection:
                try:
                    async with connection.begin():
                        updated = await connection.execute(
                            TABLE.update().where(*where).values(**values).returning(*_COLUMNS),
                            bound,
                        )
                        row = updated.first()
                        if row is None:
                            inserted = await connection.execute(
                                TABLE.insert()
                                .values(project_id=project_id, release=release, url=url, **values)
                                .returning(*_COLUMNS),
                                bound,
                            )
                            row = inserted.one()
                finally:
                    if connection.dialect.name == "sqlite":
                        # SQLite keeps what was bound to a prepared statement, and the
                        # record built from it, until the statement runs again; the
                        # driver keeps its statements as long as the connection. Each
                        # pooled connection that stored a map held three times its size
                        # (90 MiB for a 30 MiB map). A new connection is cheap there.
                        await connection.invalidate()
            break
        except IntegrityError:
            # A concurrent upload of the same URL inserted first (then this one updates
            # it), or the project is gone.
            if attempt:
                raise NotFound(f"no project {project_id}", field="project") from None
    cache_for(sessions).forget(project_id, release)
    return _stored(row)


async def list_source_maps(
    *, sessions: Sessions, project_id: int, release: str
) -> list[StoredSourceMap]:
    """The maps of one release, in upload order."""
    release = checked_release(release)
    async with sessions() as session:
        rows = await session.execute(
            sa.select(*_COLUMNS)
            .where(TABLE.c.project_id == project_id, TABLE.c.release == release)
            .order_by(TABLE.c.id)
        )
        return [_stored(row) for row in rows]


async def source_map_by_id(*, sessions: Sessions, map_id: int) -> StoredSourceMap:
    if not 0 < map_id <= MAX_INT_COLUMN:
        raise NotFound(f"no source map {map_id}", field="id")
    async with sessions() as session:
        row = (await session.execute(sa.select(*_COLUMNS).where(TABLE.c.id == map_id))).first()
    if row is None:
        raise NotFound(f"no source map {map_id}", field="id")
    return _stored(row)


async def delete_source_map(
    *, sessions: Sessions, project_id: int, map_id: int, release: str | None = None
) -> StoredSourceMap:
    """Delete a map of `project_id` (and of `release`, when given); NotFound otherwise."""
    found = await source_map_by_id(sessions=sessions, map_id=map_id)
    if found.project_id != project_id or (release is not None and found.release != release):
        raise NotFound(f"no source map {map_id}", field="id")
    async with sessions.begin() as session:
        await session.execute(TABLE.delete().where(TABLE.c.id == map_id))
    cache_for(sessions).forget(project_id, found.release)
    return found
