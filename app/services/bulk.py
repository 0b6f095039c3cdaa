"""Loading many events at once, with the ingest path's semantics at the rate of large batches.

For an operator's import, and for filling a database to measure queries at scale. The
events go through `ingest_events` — normalised, fingerprinted, grouped, users and
accounts counted, duplicates of a stored event_id skipped, the full-text index kept — so
a bulk load leaves exactly what sending them one by one would have left. What differs is
only the batching: a private `BatchWriter` commits `batch_size` events per transaction
(a server's writer takes what concurrent callers happen to have queued), and two
batches are kept in flight so one is prepared while the other is written. Batches reach
the writer in the order of `events`, so each issue's first event (its title, first
seen, first release) is the one a one-by-one load would have made it with. Nothing is
published: no subscriber is told of a bulk load, as none would want a million messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field

from app.db import Database
from app.domain.event import EventIn
from app.models import Project
from app.services.ingest import BatchWriter, IngestResult, prepare_events

DEFAULT_BATCH_SIZE = 5000


@dataclass
class BulkResult:
    """What a bulk load stored: events new to the database, repeats of a stored or
    earlier event_id, and the groups it created."""

    stored: int = 0
    duplicates: int = 0
    groups_created: set[int] = field(default_factory=set)

    def add(self, results: list[IngestResult]) -> None:
        for result in results:
            if result.status == "duplicate":
                self.duplicates += 1
                continue
            self.stored += 1
            if result.status == "created":
                self.groups_created.add(result.group_id)


async def _batches(
    events: Iterable[EventIn] | AsyncIterable[EventIn], size: int
) -> AsyncIterable[list[EventIn]]:
    batch: list[EventIn] = []
    if isinstance(events, AsyncIterable):
        async for event in events:
            batch.append(event)
            if len(batch) >= size:
                yield batch
                batch = []
    else:
        for event in events:
            batch.append(event)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


async def bulk_ingest(
    *,
    database: Database,
    project: Project,
    events: Iterable[EventIn] | AsyncIterable[EventIn],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> BulkResult:
    """Store `events` for `project`, `batch_size` per transaction; returns once all are
    committed. On an error the batches committed so far stay; the error is raised."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    writer = BatchWriter(database=database, pubsub=None, max_batch=batch_size)
    await writer.start()
    result = BulkResult()
    in_flight: set[asyncio.Task[list[IngestResult]]] = set()
    assert project.id is not None
    try:
        async for batch in _batches(events, batch_size):
            # Prepared here, in order; the task's first step queues it for the writer.
            prepared = await prepare_events(writer=writer, project=project, events=batch)
            in_flight.add(
                asyncio.create_task(writer.submit(project_id=project.id, events=prepared))
            )
            if len(in_flight) >= 2:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    result.add(task.result())
        for task in in_flight:
            result.add(await task)
        in_flight = set()
    finally:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        await writer.stop()
    return result
