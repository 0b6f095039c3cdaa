"""Scale-out: several errorgraph processes on one PostgreSQL database, sharing pub/sub
through Redis or PostgreSQL. Real servers: PostgreSQL from ERRORGRAPH_TEST_POSTGRES_URL,
and a Redis server this test starts (Debian's redis-server)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import (
    ERRORGRAPH,
    ROOT,
    LiveServer,
    RedisServer,
    WSClient,
    free_port,
    require_or_skip,
    running_server,
)

from app.config import Settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def two_servers(settings: Settings, tmp_path: Path, broadcast_url: str) -> tuple[Any, Any]:
    shared = settings.model_copy(update={"broadcast_url": broadcast_url})
    env = {"ERRORGRAPH_LOG_LEVEL": "warning"}
    return (
        running_server(shared, tmp_path, env, name="a"),
        running_server(shared, tmp_path, env, name="b"),
    )


def create_project(server: LiveServer) -> dict[str, Any]:
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "Scale", "--json"],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(created.stdout)


def events(key: str, signatures: int, count: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "api_key": key,
            "event_id": f"{prefix}-{i}",
            "timestamp": "2026-03-01T12:00:00Z",
            "type": "exception",
            "user": {"id": f"user-{i % 7}"},
            "exception": {
                "type": "TypeError",
                "message": f"boom {i}",
                "stack": f"TypeError: boom\n    at handler{i % signatures} (app.js:{i}:1)",
            },
        }
        for i in range(count)
    ]


async def send_batches(base_url: str, batch: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        for start in range(0, len(batch), 100):
            response = await http.post(
                base_url + "/api/v1/errors/batch", json=batch[start : start + 100]
            )
            assert response.status_code == 202, response.text
            assert {r["status"] for r in response.json()["results"]} == {"ok"}


@pytest.fixture
def pg_settings(postgres_url: str) -> Settings:
    return Settings(database_url=postgres_url, _env_file=None)  # type: ignore[call-arg]


async def test_two_processes_count_exactly(pg_settings: Settings, tmp_path: Path, redis_server):
    a_cm, b_cm = two_servers(pg_settings, tmp_path, redis_server.url)
    with a_cm as a, b_cm as b:
        project = create_project(a)
        await asyncio.gather(
            send_batches(a.base_url, events(project["ingest_key"], 20, 1000, "a")),
            send_batches(b.base_url, events(project["ingest_key"], 20, 1000, "b")),
        )
        async with httpx.AsyncClient() as http:
            response = await http.post(
                a.base_url + "/graphql",
                json={
                    "query": "{ groups(first: 100) { totalCount edges { node { count userCount } } } }"
                },
                headers={"Authorization": f"Bearer {project['token']}"},
            )
        groups = response.json()["data"]["groups"]
        assert groups["totalCount"] == 20
        assert [edge["node"]["count"] for edge in groups["edges"]] == [100] * 20
        # Each signature's 50 events per process cycle through all 7 users.
        assert [edge["node"]["userCount"] for edge in groups["edges"]] == [7] * 20


async def send_one(base_url: str, key: str, function: str) -> str:
    event_id = uuid.uuid4().hex
    async with httpx.AsyncClient() as http:
        response = await http.post(
            base_url + "/api/v1/errors",
            json={
                "api_key": key,
                "event_id": event_id,
                "timestamp": "2026-03-01T12:00:00Z",
                "type": "exception",
                "exception": {
                    "type": "E",
                    "message": "m",
                    "stack": f"E: m\n    at {function} (a.js:1:1)",
                },
            },
        )
    assert response.status_code == 202
    return event_id


async def subscriber(server: LiveServer, token: str) -> WSClient:
    client = await (await WSClient.open(server.base_url, token)).acked()
    await client.subscribe("1", "subscription { eventCaptured { eventId } }")
    await asyncio.sleep(0.5)
    return client


async def delivered(client: WSClient, timeout: float = 15) -> str:
    message = await client.next(timeout=timeout)
    assert message["type"] == "next", message
    return str(message["payload"]["data"]["eventCaptured"]["eventId"])


async def test_event_on_a_reaches_subscriber_on_b_through_redis_and_survives_a_restart(
    pg_settings: Settings, tmp_path: Path, redis_server: RedisServer
):
    a_cm, b_cm = two_servers(pg_settings, tmp_path, redis_server.url)
    with a_cm as a, b_cm as b:
        project = create_project(a)
        client = await subscriber(b, project["token"])
        sent = await send_one(a.base_url, project["ingest_key"], "first")
        assert await delivered(client) == sent

        # Redis goes away: ingest keeps working; when it comes back, delivery resumes.
        redis_server.stop()
        while_down = await send_one(a.base_url, project["ingest_key"], "down")
        assert while_down
        redis_server.start()
        deadline = time.monotonic() + 40
        received = None
        while time.monotonic() < deadline:
            sent = await send_one(a.base_url, project["ingest_key"], "after")
            try:
                received = await delivered(client, timeout=2)
            except TimeoutError:
                continue
            if received == sent:
                break
        assert received == sent, "delivery did not resume after Redis came back"
        await client.close()


async def test_event_on_a_reaches_subscriber_on_b_through_postgres(
    pg_settings: Settings, tmp_path: Path
):
    broadcast = pg_settings.database_url.replace("postgresql+asyncpg://", "postgres://")
    a_cm, b_cm = two_servers(pg_settings, tmp_path, broadcast)
    with a_cm as a, b_cm as b:
        project = create_project(a)
        client = await subscriber(b, project["token"])
        sent = await send_one(a.base_url, project["ingest_key"], "viaPostgres")
        assert await delivered(client) == sent
        await client.close()


@contextmanager
def running_nginx(upstreams: list[LiveServer]) -> Iterator[str]:
    """nginx with deploy/nginx.conf as shipped, only its ports changed; yields its URL.

    Its prefix is a folder its workers can reach (pytest's are the owner's alone): they
    write the bodies they buffer there, and run as another user when started by root."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        require_or_skip("nginx is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="errorgraph-nginx-"))
    workdir.chmod(0o755)
    port = free_port()
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    for placeholder, server in zip(("127.0.0.1:8001", "127.0.0.1:8002"), upstreams, strict=True):
        config = config.replace(placeholder, server.base_url.removeprefix("http://"))
    config = config.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (workdir / "nginx.conf").write_text(config)
    proxy = subprocess.Popen(
        [str(nginx), "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(base_url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (workdir / "error.log").read_text()
            time.sleep(0.1)
        yield base_url
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_behind_the_shipped_nginx_config(pg_settings: Settings, tmp_path: Path, redis_server):
    """HTTP ingest and WebSocket subscriptions both pass through deploy/nginx.conf to
    two processes."""
    a_cm, b_cm = two_servers(pg_settings, tmp_path, redis_server.url)
    with a_cm as a, b_cm as b, running_nginx([a, b]) as front_url:
        front = LiveServer(
            base_url=front_url, settings=a.settings, process=a.process, env=a.env, log=a.log
        )
        project = create_project(a)
        clients = [await subscriber(front, project["token"]) for _ in range(4)]
        sent = await send_one(front.base_url, project["ingest_key"], "throughNginx")
        for client in clients:
            assert await delivered(client) == sent
            await client.close()

        # The largest body errorgraph takes (a source map through GraphQL: 21 MiB and
        # more was refused by nginx before errorgraph saw it).
        source_map = {
            "version": 3,
            "sources": ["app.js"],
            "names": [],
            "mappings": "AAAA",
            "sourcesContent": ["x" * (30 * 1024 * 1024)],
        }
        mutation = """mutation ($p: ID!, $map: String!) {
            uploadSourceMap(projectId: $p, release: "big@1", url: "/app.min.js", sourceMap: $map)
            { size }
        }"""
        variables = {"p": str(project["id"]), "map": json.dumps(source_map)}
        async with httpx.AsyncClient(timeout=60) as http:
            uploaded = await http.post(
                front.base_url + "/graphql",
                json={"query": mutation, "variables": variables},
                headers={"Authorization": f"Bearer {project['token']}"},
            )
        assert uploaded.status_code == 200, uploaded.text[:300]
        assert uploaded.json()["data"]["uploadSourceMap"]["size"] > 30 * 1024 * 1024
