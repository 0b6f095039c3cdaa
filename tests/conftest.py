"""Shared fixtures: settings on a temporary SQLite file, the runtime, the ASGI app under
its lifespan, a project with keys, and a real uvicorn for end-to-end tests.

Tests that need a server we do not start ourselves (PostgreSQL) skip when it is absent,
unless ERRORGRAPH_REQUIRE_SERVICES=1 (set by `.ci/run`), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.main import create_app
from app.services.keys import CreatedProject, create_project
from app.services.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
# The console script installed beside the interpreter running the tests.
ERRORGRAPH = str(Path(sys.executable).with_name("errorgraph"))


def require_or_skip(reason: str) -> None:
    """Skip with `reason`, or fail when the environment says the service must be there."""
    if os.environ.get("ERRORGRAPH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'errorgraph.db'}",
        broadcast_url="memory://",
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = await Runtime.start(settings)
    try:
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
async def project(runtime: Runtime) -> CreatedProject:
    return await create_project(sessions=runtime.database.sessions, name="Test project")


@dataclass
class AppClient:
    http: httpx.AsyncClient
    runtime: Runtime


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[AppClient]:
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield AppClient(http=http, runtime=app.state.runtime)


@pytest.fixture
async def app_project(app_client: AppClient) -> CreatedProject:
    return await create_project(sessions=app_client.runtime.database.sessions, name="App project")


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


@dataclass
class LiveServer:
    base_url: str
    settings: Settings
    process: subprocess.Popen[bytes]
    env: dict[str, str]


@pytest.fixture
def live_server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """errorgraph under a real uvicorn process on 127.0.0.1, started the way the README does."""
    port = free_port()
    live_settings = settings.model_copy(update={"port": port})
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [ERRORGRAPH, "serve"],
        env=cli_env(live_settings),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError((tmp_path / "server.log").read_text())
        try:
            if httpx.get(base_url + "/health/live", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("server did not start:\n" + (tmp_path / "server.log").read_text())
        time.sleep(0.1)
    try:
        yield LiveServer(
            base_url=base_url, settings=live_settings, process=process, env=cli_env(live_settings)
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
