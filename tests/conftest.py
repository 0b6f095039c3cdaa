"""Shared fixtures: settings on a temporary SQLite file, the runtime, the ASGI app under
its lifespan, a project with keys, and a real uvicorn for end-to-end tests.

Tests that need a server we do not start ourselves (PostgreSQL) skip when it is absent,
unless ERRORGRAPH_REQUIRE_SERVICES=1 (set by `.ci/run`), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from support import (
    GQL,
    T0,
    AppClient,
    IngestResult,
    LiveServer,
    ingest,
    make_event,
    require_or_skip,
    running_server,
)

from app.config import Settings
from app.main import create_app
from app.services.keys import CreatedProject, create_project
from app.services.runtime import Runtime


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh database on the server named by ERRORGRAPH_TEST_POSTGRES_URL, dropped after."""
    url = os.environ.get("ERRORGRAPH_TEST_POSTGRES_URL")
    if not url:
        require_or_skip("ERRORGRAPH_TEST_POSTGRES_URL is not set (no PostgreSQL server)")
    import asyncpg

    dsn = str(url).replace("postgresql+asyncpg://", "postgresql://")
    name = "errorgraph_test_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = dsn.rpartition("/")[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


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


@pytest.fixture
def live_env() -> dict[str, str]:
    """Extra environment for `live_server`; override in a module to change its settings."""
    return {}


@pytest.fixture
def live_server(
    settings: Settings, tmp_path: Path, live_env: dict[str, str]
) -> Iterator[LiveServer]:
    """errorgraph under a real uvicorn process on 127.0.0.1, started the way the README does."""
    with running_server(settings, tmp_path, live_env) as server:
        yield server


@pytest.fixture
def gql(app_client: AppClient, app_project: CreatedProject) -> GQL:
    """A GraphQL client holding the app project's admin token."""
    return GQL(client=app_client, token=app_project.token.secret)


@pytest.fixture
async def populated(app_client: AppClient, app_project: CreatedProject) -> list[IngestResult]:
    """Three groups: signature 1 five times (users a,b), 2 twice, 3 once; different times."""
    events = [
        make_event(1, at=T0 + timedelta(minutes=i), user="a" if i % 2 else "b", account="acme")
        for i in range(5)
    ]
    events += [
        make_event(
            2,
            at=T0 + timedelta(hours=2, minutes=i),
            environment="staging",
            release="2.0",
            level="warning",
        )
        for i in range(2)
    ]
    events += [make_event(3, at=T0 - timedelta(days=1), user="c")]
    return await ingest(app_client, app_project, *events)
