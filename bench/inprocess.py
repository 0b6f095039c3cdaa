"""The server's own cost per Sentry envelope, driven in process: `create_app` under its
lifespan on a new SQLite file, envelopes handed to the ASGI app `--concurrency` at a time,
no HTTP server and no load generator on the cores.

    .venv/bin/python bench/inprocess.py --count 4000
    .venv/bin/python bench/inprocess.py --count 4000 --without scrubbing
    .venv/bin/python bench/inprocess.py --count 4000 --until models
    .venv/bin/python bench/inprocess.py --count 20000 --shape batch
    .venv/bin/python bench/inprocess.py --count 4000 \
        --postgres postgresql://postgres@127.0.0.1:5432/postgres

Prints events/s, the process's CPU per event, the event loop thread's and each
thread's (the writer's is the pool's, `asyncio`). `--shape batch`
sends Proliferate batches of 100 instead of envelopes (`--until` applies to envelopes). With
`--without PIECE` that piece is switched off (its function replaced by one that returns
its input), to see what it costs where it runs; with `--postgres URL` the app runs on a
new database of that server (dropped after), and the figures are this process's alone,
without the server's; with `--until STAGE` the envelope
endpoint stops after that stage (`STAGES`), to see what the stages up to it cost. Small
benchmarks looping over many events misjudge memory-bound work, and profilers misjudge
many small calls. Runs of the same code differ by ±5 % on a shared machine: compare
several.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from app.services.keys import create_project


def _switch_off(piece: str) -> None:
    import app.domain.event
    import app.services.ingest

    if piece == "scrubbing":
        app.services.ingest.scrub_event = lambda event, rules: event
    elif piece == "free-form-checks":
        app.domain.event.free_form.__code__ = (lambda value: value).__code__


PIECES = ("scrubbing", "free-form-checks")
# How far the envelope endpoint goes with `--until`: each stage includes those before it.
STAGES = ("answer", "envelope", "json", "models", "prepare", "commit")


def _stop_at(stage: str) -> Any:
    """Cut the Sentry envelope endpoint short after `stage`: what is cut off is replaced
    by a stand-in that costs nothing (one event read once and handed out again, results
    made up without the writer), so the CPU per request up to each stage can be read.
    For `answer`, the ASGI app to put in the envelope route's place; else None."""
    from starlette.routing import request_response

    import rest_compat.sentry as sentry
    from app.services import ingest

    if stage == "commit":
        return None
    real_prepare = ingest.prepare_events

    async def without_writer(
        *, writer: Any, project: Any, events: Any, key_id: int | None = None
    ) -> list[Any]:
        if stage == "prepare":
            await real_prepare(writer=writer, project=project, events=events, key_id=key_id)
        return [
            ingest.IngestResult(
                event_id=event.event_id, status="created", id=0, group_id=0, project_id=0
            )
            for event in events
        ]

    sentry.ingest_events = without_writer  # type: ignore[assignment]
    if stage in ("prepare", "models"):
        return None
    read_once: dict[str, Any] = {}
    real_event = sentry.event_from_sentry

    def event_read_once(payload: Any, *, ip: Any, event_id: Any = None) -> Any:
        if "event" not in read_once:
            read_once["event"] = real_event(payload, ip=ip, event_id=event_id)
        return read_once["event"]

    sentry.event_from_sentry = event_read_once  # type: ignore[assignment]
    if stage == "json":
        return None
    sentry._json_object = lambda data, *, what: {}  # type: ignore[assignment]
    if stage != "answer":
        return None

    async def answer(request: Any) -> Any:
        await request.body()
        return sentry.JSONOut({})

    return request_response(answer)


async def _send(asgi: Any, request: loadgen.Request) -> int:
    headers = [(name.lower().encode(), value.encode()) for name, value in request.headers.items()]
    headers.append((b"content-length", str(len(request.body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    body_sent = False
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await asgi(scope, receive, send)
    return statuses[0]


async def measure(
    count: int,
    concurrency: int,
    warm_up: int = 200,
    envelope_app: Any = None,
    shape: str = "sentry",
    postgres: str | None = None,
) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        database_url = f"sqlite+aiosqlite:///{workdir}/bench.db"
        if postgres is not None:
            database_url = await _new_database(postgres)
        try:
            await _measure(database_url, count, concurrency, warm_up, envelope_app, shape)
        finally:
            if postgres is not None:
                await _drop_database(postgres, database_url)


async def _new_database(server: str) -> str:
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{server.rpartition('/')[0]}/{name}"


async def _drop_database(server: str, url: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
    finally:
        await admin.close()


async def _measure(
    database_url: str,
    count: int,
    concurrency: int,
    warm_up: int,
    envelope_app: Any,
    shape: str,
) -> None:
    settings = Settings(
        database_url=database_url,
        broadcast_url="memory://",
        gc_freeze=True,
        client_rate_limits={"default": "", "error_tracker": ""},
        _env_file=None,  # type: ignore[call-arg]
    )
    app = create_app(settings)
    if envelope_app is not None:
        for route in app.router.routes:
            if getattr(route, "path", "").endswith("/envelope/"):
                route.app = envelope_app  # type: ignore[attr-defined]
    async with LifespanManager(app) as manager:
        runtime = app.state.runtime
        created = await create_project(sessions=runtime.database.sessions, name="bench")
        target = loadgen.Target(
            "http://in-process", created.project.id, created.ingest_key.secret, shape
        )
        requests = loadgen.build_requests(target, count=count + warm_up, signatures=100)
        first = max(1, warm_up // requests[0].events)  # warm up with ~`warm_up` events
        await asyncio.gather(*(_send(manager.app, r) for r in requests[:first]))
        pending = iter(requests[first:])

        async def client() -> None:
            for request in pending:
                status = await _send(manager.app, request)
                assert status in (200, 202), status

        threads_before = _threads_cpu()
        started, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        threads_after = _threads_cpu()
        events = sum(r.events for r in requests[first:])
        per_event: Callable[[float], str] = lambda seconds: f"{seconds * 1e3 / events:.3f}"  # noqa: E731
        print(
            f"{events / elapsed:,.0f} events/s · process CPU "
            f"{per_event(time.process_time() - cpu)} ms/event · event loop thread "
            f"{per_event(time.thread_time() - loop_cpu)} ms/event"
        )
        by_name: dict[str, float] = {}
        for tid, (name, seconds) in threads_after.items():
            spent = seconds - threads_before.get(tid, (name, 0.0))[1]
            by_name[name] = by_name.get(name, 0.0) + spent
        print(
            "by thread, ms/event: "
            + " · ".join(
                f"{name} {per_event(seconds)}"
                for name, seconds in sorted(by_name.items(), key=lambda item: -item[1])
                if seconds > 0
            )
        )


def _threads_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of each of this process's threads (Linux), by native id, with the
    name of the Python thread it runs (threads of the same kind share a name, the pool's
    workers their pool's): the writer's, SQLite's and the checkpointer's shares of the
    process's CPU."""
    names = {
        thread.native_id: re.sub(r"_\d+$", "", thread.name)
        for thread in threading.enumerate()
        if thread.native_id is not None
    }
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended
        tid = int(task.name)
        out[tid] = (names.get(tid, "other"), (int(fields[11]) + int(fields[12])) / ticks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--shape", choices=("sentry", "batch"), default="sentry")
    parser.add_argument("--without", choices=PIECES, action="append", default=[])
    parser.add_argument("--postgres", help="a PostgreSQL server's URL (a database is made)")
    parser.add_argument(
        "--until", choices=STAGES, default="commit", help="cut the endpoint short after this"
    )
    args = parser.parse_args()
    envelope_app = _stop_at(args.until)
    for piece in args.without:
        _switch_off(piece)
    asyncio.run(
        measure(
            args.count,
            args.concurrency,
            envelope_app=envelope_app,
            shape=args.shape,
            postgres=args.postgres,
        )
    )


if __name__ == "__main__":
    main()
