"""Admission (app/admission.py): a process reads and works on at most
MAX_BODY_BYTES_IN_FLIGHT bytes of request bodies at once; later requests wait their
turn, in order, before their bodies are read."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select
from support import ERRORGRAPH, running_server

from app.admission import BodyBudget
from app.config import Settings
from app.main import create_app
from app.models import Event
from app.services.keys import create_project
from app.services.runtime import Runtime


async def test_budget_admits_in_order_and_a_larger_request_alone():
    budget = BodyBudget(100)
    await budget.admit(60)
    await budget.admit(40)  # exactly full
    order: list[str] = []

    async def wait(name: str, size: int) -> None:
        await budget.admit(size)
        order.append(name)

    big = asyncio.create_task(wait("big", 250))
    small = asyncio.create_task(wait("small", 1))
    await asyncio.sleep(0)
    assert order == [] and budget.waiting == 2
    budget.release(60)
    await asyncio.sleep(0)
    # Room for the small one, but the big one came first: nothing overtakes it.
    assert order == [] and budget.waiting == 2
    budget.release(40)
    await big
    # Larger than the budget: admitted once nothing else is held, and alone.
    await asyncio.sleep(0)
    assert order == ["big"] and budget.held == 250 and budget.waiting == 1
    budget.release(250)
    await small
    assert order == ["big", "small"] and budget.held == 1
    budget.release(1)
    assert budget.held == 0


async def test_a_cancelled_waiter_gives_its_turn_to_the_next():
    budget = BodyBudget(100)
    await budget.admit(100)
    first = asyncio.create_task(budget.admit(80))
    second = asyncio.create_task(budget.admit(20))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not second.done()
    budget.release(100)
    await second
    assert budget.held == 20 and budget.waiting == 0


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """An HTTP request's ASGI scope, as uvicorn makes it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


class _Call:
    """One request driven through the ASGI app, its body handed over when the test says."""

    def __init__(
        self,
        path: str,
        body: bytes,
        *,
        method: str = "POST",
        declared: int | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        hang_up: bool = False,
    ) -> None:
        """`declared`: the `Content-Length` sent, when not the body's; `hang_up`: the client
        disconnects halfway through its body."""
        self.path, self.body, self.method = path, body, method
        self.hang_up = hang_up
        self.declared = len(body) if declared is None else declared
        self.headers = headers
        self.body_sent = asyncio.Event()
        self.read = False  # whether the app asked for the body
        self.status: int | None = None
        self.answer = b""

    async def run(self, app: Any) -> None:
        headers = [(b"content-type", b"application/json"), *self.headers]
        if self.method != "GET":
            headers.append((b"content-length", str(self.declared).encode()))
        scope = _scope(self.method, self.path, headers)
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            self.read = True
            if delivered:
                if self.hang_up:
                    return {"type": "http.disconnect"}
                await asyncio.Event().wait()  # the client stays connected
            await self.body_sent.wait()
            delivered = True
            if self.hang_up:
                half = self.body[: len(self.body) // 2]
                self.body_sent.clear()  # the next receive is the disconnect
                return {"type": "http.request", "body": half, "more_body": True}
            return {"type": "http.request", "body": self.body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body":
                self.answer += message.get("body", b"")

        await app(scope, receive, send)


def _batch(key: str, name: str, size: int) -> bytes:
    """A Proliferate batch of one event padded to about `size` bytes."""
    event = {
        "api_key": key,
        "event_id": f"admission-{name}",
        "timestamp": "2026-12-05T09:00:00Z",
        "type": "message",
        "message": f"held back {name}",
        "extra": {"padding": "x" * size},
    }
    return orjson.dumps([event])


def _gauge(exposition: bytes, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus text exposition."""
    for line in exposition.decode().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in the exposition")


@dataclass
class _Served:
    asgi: Any  # the app as the server calls it
    runtime: Runtime
    project_id: int
    key: str  # the project's ingest key
    first: _Call
    second: _Call


@asynccontextmanager
async def _server(tmp_path: Path, *, budget: int, **settings: Any) -> AsyncIterator[_Served]:
    """The app on a SQLite file with `budget` bytes in flight (and `settings`), and two
    40 KiB batches for it whose bodies arrive when the test says."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'errorgraph.db'}",
        broadcast_url="memory://",
        max_body_bytes_in_flight=budget,
        _env_file=None,  # type: ignore[call-arg]
        **settings,
    )
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        runtime: Runtime = app.state.runtime
        sessions = runtime.database.sessions
        created = await create_project(sessions=sessions, name="admission")
        key = created.ingest_key.secret
        first = _Call("/api/v1/errors/batch", _batch(key, "first", 40 * 1024))
        second = _Call("/api/v1/errors/batch", _batch(key, "second", 40 * 1024))
        yield _Served(manager.app, runtime, created.project.id, key, first, second)


async def _until(condition: Any) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_a_request_waits_unread_while_the_bodies_in_flight_fill_the_budget(
    tmp_path: Path,
):
    """Through the whole app on a real SQLite file: with a budget of 64 KiB, a 40 KiB
    batch whose body is still arriving holds a second one back, unread, while a request
    without a body passes; once the first is answered the second is read and stored."""
    async with _server(tmp_path, budget=64 * 1024) as served:
        asgi, runtime, first, second = served.asgi, served.runtime, served.first, served.second
        running = [asyncio.create_task(first.run(asgi))]
        await _until(lambda: first.read)
        running.append(asyncio.create_task(second.run(asgi)))
        await asyncio.sleep(0.2)  # time enough for the second to be read, were it admitted
        assert not second.read and second.status is None

        # A request without a body passes, and the metrics show who holds and who waits.
        scrape = _Call("/metrics", b"", method="GET")
        await asyncio.wait_for(scrape.run(asgi), 10)
        assert scrape.status == 200
        assert _gauge(scrape.answer, "errorgraph_admission_bytes_held") == len(first.body)
        assert _gauge(scrape.answer, "errorgraph_admission_requests_waiting") == 1

        first.body_sent.set()
        second.body_sent.set()
        await asyncio.wait_for(asyncio.gather(*running), 30)
        assert (first.status, second.status) == (202, 202), (first.answer, second.answer)
        async with runtime.database.sessions() as session:
            stored = await session.scalar(select(func.count()).select_from(Event))
        assert stored == 2
        after = _Call("/metrics", b"", method="GET")
        await asyncio.wait_for(after.run(asgi), 10)
        assert _gauge(after.answer, "errorgraph_admission_bytes_held") == 0
        assert _gauge(after.answer, "errorgraph_admission_requests_waiting") == 0


async def test_without_a_budget_every_request_is_read_at_once(tmp_path: Path):
    """`MAX_BODY_BYTES_IN_FLIGHT=0`: the same two requests are both read while the first
    body is still arriving (what the test above shows is the budget's doing)."""
    async with _server(tmp_path, budget=0) as served:
        asgi, first, second = served.asgi, served.first, served.second
        running = [asyncio.create_task(call.run(asgi)) for call in (first, second)]
        await _until(lambda: first.read and second.read)
        first.body_sent.set()
        second.body_sent.set()
        await asyncio.wait_for(asyncio.gather(*running), 30)
        assert (first.status, second.status) == (202, 202)


async def test_a_body_its_route_refuses_is_answered_without_waiting(tmp_path: Path):
    """Admission comes at the first read of a body: while a batch holds the whole budget,
    requests that declare more than their route takes get their 413 at once, in their
    dialect's shape, with their bodies never read. Admitted on arrival, each would have
    waited for the first, the larger ones alone."""
    async with _server(tmp_path, budget=64 * 1024) as served:
        asgi, first = served.asgi, served.first
        holding = asyncio.create_task(first.run(asgi))
        await _until(lambda: first.read)
        sentry_auth = f"Sentry sentry_key={served.key}, sentry_version=7".encode()
        refused = [
            # Proliferate: past ERRORGRAPH_MAX_BODY_BYTES (1 MiB).
            _Call("/api/v1/errors/batch", b"[]", declared=2 * 1024 * 1024),
            # Sentry: past its 20 MiB.
            _Call(
                f"/api/{served.project_id}/envelope/",
                b"{}\n",
                declared=21 * 1024 * 1024,
                headers=((b"x-sentry-auth", sentry_auth),),
            ),
            # GraphQL: past what any GraphQL request needs.
            _Call("/graphql", b"{}", declared=200 * 1024 * 1024),
        ]
        for call in refused:
            call.body_sent.set()  # were it read, its (short) body would come at once
            await asyncio.wait_for(call.run(asgi), 10)
            assert call.status == 413, (call.path, call.answer)
            assert not call.read, call.path
            assert b"request body is larger than" in call.answer
        assert orjson.loads(refused[0].answer) == {
            "detail": "request body is larger than 1048576 bytes"
        }
        [error] = orjson.loads(refused[-1].answer)["errors"]
        assert error["message"].startswith("request body is larger than 1048576 bytes; up to")
        assert error["extensions"] == {"code": "BAD_USER_INPUT"}
        first.body_sent.set()
        await asyncio.wait_for(holding, 30)
        assert first.status == 202


async def test_a_client_that_hangs_up_halfway_is_logged_as_499_and_frees_its_share(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A client that disconnects before its body has arrived (an SDK's timeout, a process
    that exits) is nothing gone wrong here: its request is logged with nginx's 499, not as
    an unhandled error and a 500, and its share of the budget is given back."""
    caplog.set_level(logging.INFO)
    async with _server(tmp_path, budget=64 * 1024) as served:
        sentry_auth = f"Sentry sentry_key={served.key}, sentry_version=7".encode()
        calls = [
            _Call("/api/v1/errors/batch", served.first.body, hang_up=True),
            _Call(
                f"/api/{served.project_id}/envelope/",
                b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}\n{"type":"event"}\n{}\n',
                headers=((b"x-sentry-auth", sentry_auth),),
                hang_up=True,
            ),
            _Call("/graphql", b'{"query": "{ __typename }"}', hang_up=True),
        ]
        for call in calls:
            call.body_sent.set()
            await asyncio.wait_for(call.run(served.asgi), 10)
            assert call.status == 499, (call.path, call.answer)
        scrape = _Call("/metrics", b"", method="GET")
        await asyncio.wait_for(scrape.run(served.asgi), 10)
        assert _gauge(scrape.answer, "errorgraph_admission_bytes_held") == 0
    logged = [r.status for r in caplog.records if r.name == "errorgraph.access"]  # type: ignore[attr-defined]
    assert logged[:3] == [499, 499, 499]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def _trickle(
    app: Any, path: str, body: bytes, *, chunk: int, every: float, silent_after: int | None = None
) -> tuple[int | None, bytes, float]:
    """POST `body` through the ASGI app `chunk` bytes every `every` seconds, and nothing
    more after `silent_after` bytes (the client stays connected); (status, answer,
    seconds until answered)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = _scope("POST", path, headers)
    sent = 0
    answer: dict[str, Any] = {"status": None, "body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent and (sent >= len(body) or sent == silent_after):
            await asyncio.Event().wait()  # no more comes; the client stays
        if sent:
            await asyncio.sleep(every)
        piece = body[sent : sent + chunk]
        sent += len(piece)
        return {"type": "http.request", "body": piece, "more_body": sent < len(body)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = dict(message["headers"])
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(app(scope, receive, send), 30)
    if answer["status"] == 408:
        assert answer["headers"][b"connection"] == b"close"
    return answer["status"], answer["body"], asyncio.get_running_loop().time() - started


async def test_a_body_that_stops_coming_is_answered_408_and_frees_its_share(tmp_path: Path):
    """A client that sends part of its body and then nothing more, staying connected,
    held its share of the budget for as long as it liked, and the requests behind it
    waited. Now, past the grace, a body must come at the minimum rate: the silent one is
    answered 408 in errorgraph's shape (whatever the route's dialect, GraphQL's too), its
    share is given back, and the batch that waited behind it is read and stored."""
    async with _server(
        tmp_path, budget=64 * 1024, body_grace_seconds=0.3, body_min_bytes_per_second=1000
    ) as served:
        asgi, second = served.asgi, served.second
        silent = asyncio.create_task(
            _trickle(
                asgi,
                "/api/v1/errors/batch",
                served.first.body,
                chunk=500,
                every=0,
                silent_after=500,
            )
        )
        await asyncio.sleep(0.05)
        behind = asyncio.create_task(second.run(asgi))
        await asyncio.sleep(0.1)
        assert not second.read  # held back by the silent one
        status, answer, seconds = await silent
        assert status == 408, answer
        # 0.3 s of grace, and a second for the 1000 bytes a second its 500 bytes bought.
        assert seconds >= 0.8
        detail = orjson.loads(answer)["detail"]
        assert detail.startswith("the request body arrived too slowly: 500 bytes in ")
        assert "at least 1000 bytes a second" in detail
        second.body_sent.set()
        await asyncio.wait_for(behind, 30)
        assert second.status == 202, second.answer

        status, answer, _ = await _trickle(
            asgi, "/graphql", b'{"query": "{ __typename }"}', chunk=10, every=0, silent_after=10
        )
        assert status == 408 and b"arrived too slowly" in answer
        scrape = _Call("/metrics", b"", method="GET")
        await asyncio.wait_for(scrape.run(asgi), 10)
        assert _gauge(scrape.answer, "errorgraph_admission_bytes_held") == 0


async def test_a_slow_body_that_keeps_the_minimum_rate_is_taken(tmp_path: Path):
    """The rule is a rate, not a deadline: a body that takes four times the grace to
    arrive, at twice the minimum rate, is stored; so is one that arrives slowly without a
    budget (the rate is enforced with or without one)."""
    for budget in (64 * 1024, 0):
        async with _server(
            tmp_path / str(budget),
            budget=budget,
            body_grace_seconds=0.25,
            body_min_bytes_per_second=2000,
        ) as served:
            body = _batch(served.key, f"steady-{budget}", 3000)
            status, answer, seconds = await _trickle(
                served.asgi, "/api/v1/errors/batch", body, chunk=200, every=0.08
            )
            assert status == 202, answer
            assert seconds >= 1.0
            status, answer, _ = await _trickle(
                served.asgi, "/api/v1/errors/batch", body, chunk=100, every=0.5
            )
            assert status == 408, answer


def test_a_silent_body_is_cut_off_by_the_real_server(tmp_path: Path):
    """Against `errorgraph serve` (uvicorn) on a socket: a client that announces a batch,
    sends its first bytes and then nothing gets its 408 as JSON, and the server closes
    the connection, while a batch sent whole beside it is stored."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'errorgraph.db'}",
        broadcast_url="memory://",
        _env_file=None,  # type: ignore[call-arg]
    )
    env = {"ERRORGRAPH_BODY_GRACE_SECONDS": "0.5", "ERRORGRAPH_BODY_MIN_BYTES_PER_SECOND": "1000"}
    with running_server(settings, tmp_path, env) as server:
        created = subprocess.run(
            [ERRORGRAPH, "project", "create", "slow", "--json"],
            env=server.env,
            check=True,
            capture_output=True,
        )
        key = orjson.loads(created.stdout)["ingest_key"]
        port = int(server.base_url.rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(
                b"POST /api/v1/errors/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 50000\r\n\r\n[{"
            )
            answered = httpx.post(
                server.base_url + "/api/v1/errors/batch", content=_batch(key, "whole", 100)
            )
            assert answered.status_code == 202, answered.text
            received = b""
            while chunk := client.recv(65536):  # until the server closes the connection
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), received
        assert b"connection: close" in head.lower()
        assert orjson.loads(body)["detail"].startswith(
            "the request body arrived too slowly: 2 bytes in "
        )


async def test_a_handler_waiting_for_the_disconnect_after_the_body_is_not_cut_off():
    """The rate is the body's: once it has all arrived, a handler that waits on for the
    client's disconnect (a streamed answer does) waits at no pace, however long."""
    from app.admission import AdmissionMiddleware

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        with pytest.raises(TimeoutError):  # its own wait, past the body's allowance
            await asyncio.wait_for(receive(), 0.6)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    app = AdmissionMiddleware(handler, budget=BodyBudget(1024), min_rate=1000, grace=0.2)
    status, answer, _ = await _trickle(app, "/stream", b"x" * 100, chunk=50, every=0.01)
    assert (status, answer) == (200, b"x" * 100)
