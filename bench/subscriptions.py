"""Ingest → subscriber push latency.

For each event: the time from the moment its ingest request (`POST /api/v1/errors`) has
been answered to the moment each subscriber has the `eventCaptured` message. Run with 1,
100 and 1000 subscribers, on the embedded default (SQLite, memory pub/sub, one process)
and scaled out (PostgreSQL, Redis, ingest through process A while every subscriber is on
process B).

    .venv/bin/python bench/subscriptions.py --subscribers 1 100 1000 --events 200
    .venv/bin/python bench/subscriptions.py --backend redis \\
        --postgres postgresql://postgres@127.0.0.1:5432/postgres --redis redis://127.0.0.1:6379/0

The load generator and the server share the machine's cores: say so beside every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
ERRORGRAPH = str(Path(sys.executable).with_name("errorgraph"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def server(env: dict[str, str], workdir: Path, name: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {**env, "ERRORGRAPH_PORT": str(port), "ERRORGRAPH_LOG_LEVEL": "warning"}
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen([ERRORGRAPH, "serve"], env=env, cwd=workdir, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/health/live").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit((workdir / f"{name}.log").read_text())
        time.sleep(0.1)
    try:
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


class Arrivals:
    """When each subscriber got each event; wakes the sender once all have it."""

    def __init__(self, subscribers: int) -> None:
        self.subscribers = subscribers
        self.seen: dict[str, list[float]] = {}
        self.complete: dict[str, asyncio.Event] = {}

    def waiter(self, event_id: str) -> asyncio.Event:
        return self.complete.setdefault(event_id, asyncio.Event())

    def arrived(self, event_id: str) -> None:
        moments = self.seen.setdefault(event_id, [])
        moments.append(time.perf_counter())
        if len(moments) >= self.subscribers:
            self.waiter(event_id).set()


async def subscriber(base: str, token: str, arrivals: Arrivals) -> ClientConnection:
    socket = await connect(
        base.replace("http", "ws", 1) + "/graphql",
        subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
        max_queue=None,
    )
    await socket.send(
        json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
    )
    ack = json.loads(await socket.recv())
    assert ack["type"] == "connection_ack", ack
    await socket.send(
        json.dumps(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {"query": "subscription { eventCaptured { eventId } }"},
            }
        )
    )

    async def read() -> None:
        async for raw in socket:
            message = json.loads(raw)
            if message.get("type") == "next":
                arrivals.arrived(message["payload"]["data"]["eventCaptured"]["eventId"])

    asyncio.get_running_loop().create_task(read())
    return socket


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def measure(
    ingest_base: str, subscribe_base: str, project: dict[str, Any], subscribers: int, events: int
) -> dict[str, float]:
    arrivals = Arrivals(subscribers)
    sockets = []
    for start in range(0, subscribers, 50):
        sockets += await asyncio.gather(
            *(
                subscriber(subscribe_base, project["token"], arrivals)
                for _ in range(min(50, subscribers - start))
            )
        )
    await asyncio.sleep(1)
    answered: dict[str, float] = {}
    async with httpx.AsyncClient() as http:
        for _ in range(events):
            event_id = uuid.uuid4().hex
            response = await http.post(
                ingest_base + "/api/v1/errors",
                json={
                    "api_key": project["ingest_key"],
                    "event_id": event_id,
                    "timestamp": "2026-03-01T12:00:00Z",
                    "type": "exception",
                    "exception": {
                        "type": "E",
                        "message": "m",
                        "stack": "E: m\n    at f (a.js:1:1)",
                    },
                },
            )
            answered[event_id] = time.perf_counter()
            assert response.status_code == 202
            # One event in flight at a time: latency, not throughput.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrivals.waiter(event_id).wait(), 30)
    latencies = [
        (moment - answered[event_id]) * 1000
        for event_id, moments in arrivals.seen.items()
        if event_id in answered
        for moment in moments
    ]
    for socket in sockets:
        await socket.close()
    expected = subscribers * events
    return {
        "delivered": len(latencies) / expected * 100,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "mean": statistics.fmean(latencies),
    }


def create_project(env: dict[str, str], workdir: Path) -> dict[str, Any]:
    out = subprocess.run(
        [ERRORGRAPH, "project", "create", "bench", "--json"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def fresh_postgres_database(url: str) -> str:
    import asyncpg

    name = "errorgraph_bench_" + uuid.uuid4().hex[:8]

    async def create() -> None:
        conn = await asyncpg.connect(url)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    return url.rpartition("/")[0] + "/" + name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--backend", choices=["memory", "redis", "postgres"], default="memory")
    parser.add_argument("--postgres", default=os.environ.get("ERRORGRAPH_TEST_POSTGRES_URL"))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERRORGRAPH_")}
        if args.backend == "memory":
            env["ERRORGRAPH_DATABASE_URL"] = f"sqlite+aiosqlite:///{workdir}/bench.db"
            env["ERRORGRAPH_BROADCAST_URL"] = "memory://"
        else:
            if not args.postgres:
                raise SystemExit("--postgres URL (or ERRORGRAPH_TEST_POSTGRES_URL) is needed")
            database = fresh_postgres_database(args.postgres)
            env["ERRORGRAPH_DATABASE_URL"] = database
            env["ERRORGRAPH_BROADCAST_URL"] = (
                args.redis
                if args.backend == "redis"
                else database.replace("postgresql", "postgres", 1)
            )
        env["ERRORGRAPH_SUBSCRIBER_QUEUE_SIZE"] = "100000"
        print(
            f"# {time.strftime('%Y-%m-%d')} · {os.cpu_count()} cores shared by server(s) and "
            f"load generator · backend {args.backend} · {args.events} events, one at a time"
        )
        print("| subscribers | delivered % | p50 ms | p95 ms | p99 ms | peak RSS MiB |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        with contextlib.ExitStack() as stack:
            ingest_base, ingest_pid = stack.enter_context(server(env, workdir, "a"))
            if args.backend == "memory":
                subscribe_base, subscribe_pid = ingest_base, ingest_pid
            else:
                subscribe_base, subscribe_pid = stack.enter_context(server(env, workdir, "b"))
            project = create_project({**env}, workdir)
            for count in args.subscribers:
                result = asyncio.run(
                    measure(ingest_base, subscribe_base, project, count, args.events)
                )
                rss = max(peak_rss_mib(ingest_pid), peak_rss_mib(subscribe_pid))
                print(
                    f"| {count} | {result['delivered']:.1f} | {result['p50']:.1f} | "
                    f"{result['p95']:.1f} | {result['p99']:.1f} | {rss:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
