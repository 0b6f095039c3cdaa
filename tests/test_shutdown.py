"""SIGTERM under load: every event a client was told was accepted is stored, requests in
flight are answered, and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
from support import running_server

from app.config import Settings
from app.services.events import EventFilter, list_events
from app.services.keys import CreatedProject, create_project
from app.services.runtime import Runtime

CLIENTS = 48
SIGTERM_AFTER = 300  # acknowledged events


async def new_project(settings: Settings) -> CreatedProject:
    runtime = await Runtime.start(settings)
    try:
        return await create_project(sessions=runtime.database.sessions, name="Under load")
    finally:
        await runtime.stop()


async def stored_event_ids(settings: Settings, project_id: int) -> set[str]:
    runtime = await Runtime.start(settings)
    try:
        found: set[str] = set()
        after = None
        while True:
            page = await list_events(
                sessions=runtime.database.sessions,
                where=EventFilter(project_id=project_id),
                first=100,
                after=after,
            )
            found.update(event.event_id for event in page.items)
            if not page.has_next:
                return found
            after = page.end_cursor
    finally:
        await runtime.stop()


class Load:
    """CLIENTS clients posting events one after another until the server is gone."""

    def __init__(self, base_url: str, key: str) -> None:
        self.base_url = base_url
        self.key = key
        self.sent: set[str] = set()
        self.acknowledged: set[str] = set()
        self.answered_after_sigterm = 0
        self.other_statuses: list[int] = []
        self.sigterm_sent = False
        self.enough = asyncio.Event()

    async def client(self, http: httpx.AsyncClient, number: int) -> None:
        for n in range(1_000_000):
            event_id = f"c{number}-{n}"
            body = {
                "api_key": self.key,
                "event_id": event_id,
                "timestamp": "2025-01-15T10:30:00Z",
                "type": "exception",
                "exception": {"type": "LoadError", "message": f"client {number}"},
            }
            self.sent.add(event_id)
            try:
                response = await http.post("/api/v1/errors", json=body)
            except httpx.TransportError:
                return  # refused, reset or closed: the server is going away
            if response.status_code == 202:
                self.acknowledged.add(response.json()["event_id"])
                if self.sigterm_sent:
                    self.answered_after_sigterm += 1
                if len(self.acknowledged) >= SIGTERM_AFTER:
                    self.enough.set()
            else:
                self.other_statuses.append(response.status_code)
                if self.sigterm_sent:
                    return

    async def run_until_stopped(self, terminate: Callable[[], None]) -> None:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=60) as http:
            clients = [asyncio.create_task(self.client(http, n)) for n in range(CLIENTS)]
            await asyncio.wait_for(self.enough.wait(), 120)
            terminate()
            self.sigterm_sent = True
            await asyncio.wait_for(asyncio.gather(*clients), 120)


def test_sigterm_under_load_keeps_every_acknowledged_event(settings: Settings, tmp_path: Path):
    created = asyncio.run(new_project(settings))
    # Batches wait for company, so that many requests are waiting for their commit when the
    # signal comes.
    env = {"ERRORGRAPH_WRITER_MAX_WAIT_MS": "200", "ERRORGRAPH_SHUTDOWN_TIMEOUT": "60"}
    with running_server(settings, tmp_path, env) as server:
        load = Load(server.base_url, created.ingest_key.secret)
        asyncio.run(load.run_until_stopped(lambda: server.process.send_signal(signal.SIGTERM)))
        exit_code = server.process.wait(timeout=60)
    log = server.log.read_text()

    assert exit_code == 0, log
    assert set(load.other_statuses) <= {503}, load.other_statuses
    assert created.project.id is not None
    stored = asyncio.run(stored_event_ids(settings, created.project.id))
    assert load.acknowledged <= stored
    assert stored <= load.sent

    # The server log, in order: requests still in flight when uvicorn stopped accepting
    # were answered 202, and all of them before the writer was stopped.
    lines = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    stopped_accepting = events.index("Shutting down")
    writer_stopping = events.index("Waiting for application shutdown.")
    answered_late = [
        line
        for line in lines[stopped_accepting:]
        if line.get("logger") == "errorgraph.access" and line.get("status") == 202
    ]
    assert answered_late, log
    assert all(lines.index(line) < writer_stopping for line in answered_late)
    assert load.answered_after_sigterm >= len(answered_late)
    assert "Application shutdown complete." in events[writer_stopping:]
