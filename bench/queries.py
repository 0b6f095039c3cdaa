"""Query latency at scale: fill a database through the service layer's bulk path, then
time the GraphQL queries a dashboard makes.

    .venv/bin/python bench/queries.py fill --events 1000000 --groups 10000 --db /tmp/q/bench.db
    .venv/bin/python bench/queries.py measure --db /tmp/q/bench.db --runs 200

`fill` creates a project and writes `--events` events in `--groups` groups with
`app.services.bulk.bulk_ingest` (the ingest path's normalising, grouping, counting and
full-text indexing, in transactions of `--batch` events). Every group gets one event,
the rest go to groups drawn with a long tail (a few issues hold most events, as in
life); timestamps spread over the last 30 days, 50,000 users, three releases and two
environments. It writes the project's secrets beside the database (`<db>.json`).

`measure` starts `errorgraph serve` on that file and sends each query `--runs` times,
one at a time after a warm-up, printing p50/p95 per query: `groups(first: 50)` for each
sort (and the second page, through the cursor), a group page (the group, its latest event
with its stack, its 20 latest events) for the largest group and for groups drawn at
random, and full-text search over events and over groups. The client (httpx) runs on the
same cores as the server; latencies are measured at the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
import servers

WORDS = [
    "timeout",
    "refused",
    "declined",
    "expired",
    "missing",
    "invalid",
    "overflow",
    "deadlock",
    "corrupt",
    "denied",
    "unavailable",
    "throttled",
    "malformed",
    "unexpected",
    "duplicate",
    "stale",
]
MODULES = ("billing", "checkout", "catalog", "search", "accounts", "shipping", "reports")


def synthetic_events(count: int, groups: int, *, seed: int = 7) -> Iterator[Any]:
    """`count` EventIn over `groups` signatures: each once, then a long-tailed draw."""
    from app.domain.event import EventIn, ExceptionIn, Frame, UserIn

    rng = random.Random(seed)
    end = datetime.now(UTC)
    span = timedelta(days=30).total_seconds()
    for n in range(count):
        signature = n if n < groups else int(groups * rng.random() ** 3)
        module = MODULES[signature % len(MODULES)]
        word = WORDS[signature % len(WORDS)]
        user = rng.randrange(50_000)
        frames = [
            Frame(
                filename=f"app/{module}/views.py",
                module=f"app.{module}.views",
                function="dispatch",
                lineno=40,
                in_app=True,
            ),
            Frame(
                filename=f"app/{module}/service.py",
                module=f"app.{module}.service",
                function=f"handle_{signature}",
                lineno=120 + signature % 50,
                in_app=True,
                context_line=f"    return backend.call_{signature}(request)",
            ),
            Frame(
                filename=f"app/{module}/backend.py",
                module=f"app.{module}.backend",
                function=f"call_{signature}",
                lineno=300,
                in_app=True,
                context_line=f'    raise {module.title()}Error("{word}")',
            ),
        ]
        yield EventIn(
            event_id=f"{n:032x}",
            timestamp=end - timedelta(seconds=span * (count - n) / count),
            platform="python",
            environment="production" if n % 5 else "staging",
            release=f"shop@2.{n * 3 // count}.0",
            server_name=f"web-{n % 4}",
            exceptions=[
                ExceptionIn(
                    type=f"{module.title()}Error{signature}",
                    value=f"{module} {word}: request {signature} failed",
                    module=f"app.{module}.backend",
                    frames=frames,
                )
            ],
            user=UserIn(id=f"u-{user}", email=f"user{user}@example.com"),
            tags={"region": ("eu-west-1", "us-east-1")[n % 2], "plan": ("free", "pro")[n % 3 > 0]},
            dialect="sentry",
        )


async def fill(db: Path, events: int, groups: int, batch: int) -> dict[str, Any]:
    from app.config import Settings
    from app.db import create_database, upgrade_database
    from app.services.bulk import bulk_ingest
    from app.services.keys import create_project

    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{db}",
        _env_file=None,  # type: ignore[call-arg]
    )
    database = create_database(settings)
    try:
        await upgrade_database(database)
        created = await create_project(sessions=database.sessions, name="bench")
        started = time.perf_counter()
        result = await bulk_ingest(
            database=database,
            project=created.project,
            events=synthetic_events(events, groups),
            batch_size=batch,
        )
        seconds = time.perf_counter() - started
    finally:
        await database.dispose()
    project = created.project
    return {
        "id": project.id,
        "name": project.name,
        "ingest_key": created.ingest_key.secret,
        "token": created.token.secret,
        "events": result.stored,
        "groups": len(result.groups_created),
        "seconds": seconds,
    }


GROUP_LIST = """
query($p: ID!, $sort: GroupSort!, $after: String) {
  groups(projectId: $p, sort: $sort, first: 50, after: $after) {
    edges { node { id title culprit level status count userCount firstSeen lastSeen } }
    pageInfo { endCursor hasNextPage }
  }
}"""

GROUP_LIST_COUNTED = """
query($p: ID!) {
  groups(projectId: $p, first: 50) {
    totalCount
    edges { node { id title count userCount lastSeen } }
  }
}"""

GROUP_PAGE = """
query($id: ID!) {
  group(id: $id) {
    id title culprit status count userCount firstSeen lastSeen firstRelease lastRelease
    latestEvent {
      id eventId timestamp message release environment tags
      exception { type value frames { filename function module lineno contextLine } }
    }
    events(first: 20) { edges { node { id eventId timestamp release environment } } }
  }
}"""

EVENT_SEARCH = """
query($p: ID!, $q: String!) {
  events(projectId: $p, search: $q, first: 50) {
    edges { node { id eventId timestamp message } }
  }
}"""

GROUP_SEARCH = """
query($p: ID!, $q: String!) {
  groups(projectId: $p, search: $q, first: 50) { edges { node { id title count } } }
}"""


async def timed(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], runs: int
) -> tuple[list[float], Any]:
    latencies, data = [], None
    for _ in range(runs):
        started = time.perf_counter()
        response = await client.post("/graphql", json={"query": query, "variables": variables})
        latencies.append((time.perf_counter() - started) * 1000)
        body = response.json()
        if "errors" in body:
            raise SystemExit(f"GraphQL: {body['errors']}")
        data = body["data"]
    return latencies, data


async def measure_queries(server: servers.Server, runs: int) -> list[tuple[str, list[float]]]:
    rows: list[tuple[str, list[float]]] = []
    headers = {"Authorization": f"Bearer {server.token}"}
    p = str(server.project_id)
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=120) as c:

        async def run(name: str, query: str, variables: dict[str, Any]) -> Any:
            await timed(c, query, variables, 5)  # warm-up: caches, prepared statements
            latencies, data = await timed(c, query, variables, runs)
            rows.append((name, latencies))
            print(f"  {name}: p50 {loadgen.percentile(latencies, 50):.1f} ms", file=sys.stderr)
            return data

        for sort in ("LAST_SEEN_DESC", "COUNT_DESC", "FIRST_SEEN_DESC"):
            data = await run(f"groups(first: 50, sort: {sort})", GROUP_LIST, {"p": p, "sort": sort})
            cursor = data["groups"]["pageInfo"]["endCursor"]
            if sort == "COUNT_DESC":
                largest = data["groups"]["edges"][0]["node"]["id"]
            await run(
                f"groups(first: 50, sort: {sort}), page 2",
                GROUP_LIST,
                {"p": p, "sort": sort, "after": cursor},
            )
        await run("groups(first: 50) with totalCount", GROUP_LIST_COUNTED, {"p": p})
        await run("group page, largest group", GROUP_PAGE, {"id": largest})
        # Random groups: one query each, so no cache helps twice.
        _, ids = await timed(
            c,
            "query($p: ID!) { groups(projectId: $p, sort: FIRST_SEEN_DESC, first: 100)"
            " { edges { node { id } } } }",
            {"p": p},
            1,
        )
        pool = [edge["node"]["id"] for edge in ids["groups"]["edges"]]
        random_latencies = []
        for group_id in random.Random(3).choices(pool, k=runs):
            latencies, _ = await timed(c, GROUP_PAGE, {"id": group_id}, 1)
            random_latencies += latencies
        rows.append(("group page, random groups", random_latencies))
        for words in ("deadlock", "billing timeout", "request 4242"):
            await run(f'events(search: "{words}", first: 50)', EVENT_SEARCH, {"p": p, "q": words})
        await run(
            'groups(search: "checkout refused", first: 50)',
            GROUP_SEARCH,
            {"p": p, "q": "checkout refused"},
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["fill", "measure", "both"])
    parser.add_argument("--db", type=Path, help="the SQLite file (default: a temporary one)")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory(prefix="errorgraph-queries-")
        args.db = Path(tmp.name) / "bench.db"
    secrets = args.db.with_suffix(".json")
    if args.step in {"fill", "both"}:
        if args.db.exists():
            raise SystemExit(f"{args.db} exists: fill writes a new database")
        args.db.parent.mkdir(parents=True, exist_ok=True)
        info = asyncio.run(fill(args.db, args.events, args.groups, args.batch))
        secrets.write_text(json.dumps(info))
        size = args.db.stat().st_size / 2**20
        print(
            f"filled {args.db}: {info['events']:,} events in {info['groups']:,} groups in "
            f"{info['seconds']:.0f} s ({info['events'] / info['seconds']:,.0f} events/s "
            f"through bulk_ingest, batches of {args.batch}); {size:,.0f} MiB",
            flush=True,
        )
    if args.step in {"measure", "both"}:
        info = json.loads(secrets.read_text())
        workdir = args.db.parent
        with (
            servers.errorgraph_server(
                workdir,
                database_url=f"sqlite+aiosqlite:///{args.db}",
                project={
                    "id": info["id"],
                    "ingest_key": info["ingest_key"],
                    "token": info["token"],
                },
            ) as server,
            servers.RssSampler(server.pids) as rss,
        ):
            rows = asyncio.run(measure_queries(server, args.runs))
        load = os.getloadavg()[0]
        print(
            f"\n{time.strftime('%Y-%m-%d %H:%M')} · {platform.node()} · {os.cpu_count()} cores "
            f"shared by server and client · load average {load:.1f} · {info['events']:,} "
            f"events in {info['groups']:,} groups (SQLite) · {args.runs} runs per query, "
            f"one at a time · peak server RSS {rss.peak:.0f} MiB\n"
        )
        print("| query | p50 ms | p95 ms | p99 ms |")
        print("| --- | ---: | ---: | ---: |")
        for name, latencies in rows:
            print(
                f"| `{name}` | {loadgen.percentile(latencies, 50):.1f} | "
                f"{loadgen.percentile(latencies, 95):.1f} | "
                f"{loadgen.percentile(latencies, 99):.1f} |"
            )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
