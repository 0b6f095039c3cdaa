"""Helpers shared by tests: the console script, environments for it, free ports, the
GraphQL client, and event factories. Fixtures live in conftest.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.config import Settings
from app.domain.event import AccountIn, EventIn, EventType, ExceptionIn, Frame, UserIn
from app.services.ingest import IngestResult, ingest_events
from app.services.keys import CreatedProject
from app.services.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
# The console script installed beside the interpreter running the tests.
ERRORGRAPH = str(Path(sys.executable).with_name("errorgraph"))
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def require_or_skip(reason: str) -> None:
    """Skip with `reason`, or fail when the environment says the service must be there."""
    if os.environ.get("ERRORGRAPH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def rss_mib(pid: int) -> float:
    """A process's resident memory, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ERRORGRAPH_")}
    env.update(
        ERRORGRAPH_DATABASE_URL=settings.database_url,
        ERRORGRAPH_BROADCAST_URL=settings.broadcast_url,
        ERRORGRAPH_PORT=str(settings.port),
        ERRORGRAPH_HOST=settings.host,
    )
    env.update(extra)
    return env


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 that a test can stop and start again."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            require_or_skip("redis-server is not installed")
        self.binary = str(binary)
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@dataclass
class LiveServer:
    base_url: str
    settings: Settings
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path


@contextmanager
def running_server(
    settings: Settings,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    *,
    name: str = "server",
) -> Iterator[LiveServer]:
    """`errorgraph serve` as a real process on a free port of 127.0.0.1, until the block ends."""
    port = free_port()
    live_settings = settings.model_copy(update={"port": port})
    env = cli_env(live_settings, **(extra_env or {}))
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [ERRORGRAPH, "serve"], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
        )
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(log_path.read_text())
            try:
                if httpx.get(base_url + "/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("server did not start:\n" + log_path.read_text())
            time.sleep(0.1)
        try:
            yield LiveServer(
                base_url=base_url, settings=live_settings, process=process, env=env, log=log_path
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class AppClient:
    http: httpx.AsyncClient
    runtime: Runtime


@dataclass
class GQL:
    client: AppClient
    token: str | None

    async def raw(self, query: str, variables: dict[str, Any] | None = None, token: Any = ...):
        token = self.token if token is ... else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )

    async def __call__(
        self, query: str, variables: dict[str, Any] | None = None, token: Any = ...
    ) -> dict[str, Any]:
        response = await self.raw(query, variables, token)
        assert response.status_code == 200, response.text
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    async def error(
        self, query: str, variables: dict[str, Any] | None = None, token: Any = ...
    ) -> dict[str, Any]:
        response = await self.raw(query, variables, token)
        body = response.json()
        assert body.get("errors"), body
        return body["errors"][0]


def make_event(
    signature: int,
    *,
    at: datetime = T0,
    user: str | None = None,
    account: str | None = None,
    environment: str = "production",
    release: str = "1.0",
    level: str = "error",
    message: str | None = None,
    tags: dict[str, str] | None = None,
) -> EventIn:
    if message is not None:
        return EventIn(
            type=EventType.MESSAGE,
            message=message,
            timestamp=at,
            environment=environment,
            release=release,
            level=level,
            tags=tags or {},
        )
    frames = [
        Frame(
            filename="shop/cart.py",
            function=f"checkout{signature}",
            lineno=10,
            in_app=True,
            context_line="total = price / qty",
        ),
        Frame(filename="shop/lib.py", function="helper", lineno=3, in_app=False),
    ]
    return EventIn(
        timestamp=at,
        exceptions=[
            ExceptionIn(
                type=f"Error{signature}", value=f"failure number {signature}", frames=frames
            )
        ],
        user=UserIn(id=user, email=f"{user}@example.com") if user else None,
        account=AccountIn(id=account, name=f"{account} Inc") if account else None,
        environment=environment,
        release=release,
        level=level,
        tags=tags or {"browser": "Firefox"},
        breadcrumbs=[{"category": "click", "message": "button#pay"}],
    )


async def ingest(
    app_client: AppClient, project: CreatedProject, *events: EventIn
) -> list[IngestResult]:
    return await ingest_events(
        writer=app_client.runtime.writer, project=project.project, events=list(events)
    )


class WSClient:
    """A bare graphql-transport-ws client, for what a library client hides: close codes,
    a consumer that stops reading, exact message order."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket

    @classmethod
    async def open(
        cls,
        base_url: str,
        token: str | None,
        *,
        init: bool = True,
        protocol: str = "graphql-transport-ws",
    ) -> WSClient:
        from websockets.asyncio.client import connect

        socket = await connect(
            base_url.replace("http", "ws", 1) + "/graphql", subprotocols=[protocol]
        )  # type: ignore[list-item]
        client = cls(socket)
        if init:
            payload = {"Authorization": f"Bearer {token}"} if token else {}
            await client.send({"type": "connection_init", "payload": payload})
        return client

    async def send(self, message: dict[str, Any]) -> None:
        await self.socket.send(orjson.dumps(message).decode())

    async def receive(self, timeout: float = 10) -> dict[str, Any]:
        return orjson.loads(await asyncio.wait_for(self.socket.recv(), timeout))

    async def acked(self) -> WSClient:
        message = await self.receive()
        assert message["type"] == "connection_ack", message
        return self

    async def subscribe(
        self, op_id: str, query: str, variables: dict[str, Any] | None = None
    ) -> None:
        await self.send(
            {
                "id": op_id,
                "type": "subscribe",
                "payload": {"query": query, "variables": variables or {}},
            }
        )

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        """The next `next` message's payload (skipping pings)."""
        while True:
            message = await self.receive(timeout)
            if message["type"] == "ping":
                await self.send({"type": "pong"})
                continue
            return message

    async def close_code(self, timeout: float = 10) -> int | None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                await asyncio.wait_for(self.socket.recv(), timeout)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None

    async def close(self) -> None:
        await self.socket.close()
