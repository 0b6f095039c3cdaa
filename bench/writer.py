"""The batch writer's own cost per event: prepared events written in batches of
`--batch` by the writer's transaction function, called in this thread, on a new SQLite
file, so that its CPU is neither shared with the event loop nor waiting for the
interpreter lock the loop holds.

    .venv/bin/python bench/writer.py --count 3000
    .venv/bin/python bench/writer.py --count 3000 --batch 100
    .venv/bin/python bench/writer.py --count 3000 --profile 25

The events are the load generator's Sentry events (100 signatures, 1,000 users), read,
scrubbed and fingerprinted before the clock starts; the first 400 are written before it
too (new groups and users, warm caches). Prints the writer's CPU per event; with
`--profile N`, the N functions with the most time of their own (a deterministic profile
adds to every call: compare with and without). Runs of the same code differ by ±10 % on
a shared machine: compare several, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.domain.scrubbing import ScrubRules, scrub_event
from app.main import create_app
from app.services import ingest
from app.services.keys import create_project
from rest_compat.sentry import event_from_sentry

WARM_UP = 400


async def measure(*, count: int, batch: int, profile: int, workdir: str) -> None:
    settings = Settings(
        database_url=f"sqlite:///{workdir}/bench.db",
        broadcast_url="memory://",
        _env_file=None,  # type: ignore[call-arg]
    )
    app = create_app(settings)
    async with LifespanManager(app):
        runtime = app.state.runtime
        created = await create_project(sessions=runtime.database.sessions, name="bench")
        project = created.project
        _, _, template = loadgen._template()
        now = datetime.now(UTC)
        prepared = []
        for index in range(count + WARM_UP):
            sent = loadgen.sentry_event(
                template, signature=index % 100, user=index % 1000, now=now, order=1000 + index
            )
            event = event_from_sentry(sent, ip="10.0.0.1")
            assert event is not None
            prepared.append(
                ingest.prepare_event(
                    scrub_event(event, ScrubRules()),
                    strategy=project.grouping_strategy,
                    project_id=project.id,
                    project_name=project.name,
                )
            )
        database = runtime.database
        loop = asyncio.get_running_loop()

        def batches(events: list[ingest.PreparedEvent]) -> Iterator[list[ingest._Pending]]:
            for start in range(0, len(events), batch):
                yield [
                    ingest._Pending(project.id, [one], loop.create_future())
                    for one in events[start : start + batch]
                ]

        def write(events: list[ingest.PreparedEvent]) -> None:
            for pending in batches(events):
                ingest._write_in_transaction(
                    database.sync_writer, pending, now, database.writer_turns
                )

        write(prepared[:WARM_UP])
        profiler = cProfile.Profile() if profile else None
        started = time.thread_time()
        if profiler is not None:
            profiler.enable()
        write(prepared[WARM_UP:])
        if profiler is not None:
            profiler.disable()
        used = time.thread_time() - started
        print(f"writer CPU {used / count * 1e3:.3f} ms/event · batches of {batch}", flush=True)
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8, help="events per transaction")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="errorgraph-writer-") as workdir:
        asyncio.run(
            measure(count=args.count, batch=args.batch, profile=args.profile, workdir=workdir)
        )


if __name__ == "__main__":
    main()
