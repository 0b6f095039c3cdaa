"""Ingest runs, each printing one table (Markdown) of every repeat and the medians.

    .venv/bin/python bench/ingest.py hello      # 1. errorgraph vs a bare uvicorn app
    .venv/bin/python bench/ingest.py bugsink    # 2. errorgraph vs Bugsink, end to end
    .venv/bin/python bench/ingest.py batch      # 3. Proliferate batches of 100
    .venv/bin/python bench/ingest.py processes --postgres URL --redis URL   # 6. 1, 2, 4

Every repeat starts each server fresh (a new SQLite file or PostgreSQL database) and
sends the same kind of events (see `loadgen.py`); the servers of one repeat run one
after the other, interleaved with the other repeats, so a machine that gets busier
during a run does not favour one side. Peak RSS is the largest resident size of the
server's whole process tree (all workers; for Bugsink gunicorn and snappea) sampled
every 50 ms during the repeat. The load generator runs on the same cores as the
server: every figure is for both together.

To measure a given commit rather than the work tree: `git archive <commit> app
rest_compat | tar -x -C /tmp/snap` and run with `PYTHONPATH=/tmp/snap`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
import servers

# A per-address rate limit would refuse a load generator on one address: off here.
NO_CLIENT_LIMITS = {"ERRORGRAPH_CLIENT_RATE_LIMITS": '{"default": "", "error_tracker": ""}'}
# What every errorgraph server of a run gets in its environment (`--server-env` adds).
SERVER_ENV: dict[str, str] = dict(NO_CLIENT_LIMITS)

COLUMNS = (
    "| run | server | events | accepted ev/s | p50 ms | p95 ms | p99 ms | answers "
    "| end-to-end ev/s | server CPU ms/event | peak RSS MiB | peak PSS MiB |"
)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.node()} · {os.cpu_count()} cores "
        f"shared by server and load generator · load average {load[0]:.1f} at start · "
        f"Python {platform.python_version()}"
    )


def row(run: str, name: str, result: loadgen.Result) -> str:
    e2e = f"{result.e2e_per_s:,.0f}" if result.e2e_per_s is not None else "-"
    return (
        f"| {run} | {name} | {result.events:,} | {result.accepted_per_s:,.0f} | "
        f"{result.p50_ms:.1f} | {result.p95_ms:.1f} | {result.p99_ms:.1f} | "
        f"{result.status_text()} | {e2e} | {result.server_cpu_ms_per_event:.2f} | "
        f"{result.peak_rss_mib:.0f} | {result.peak_pss_mib:.0f} |"
    )


def median_row(name: str, results: list[loadgen.Result]) -> str:
    def med(attribute: str) -> float:
        return loadgen.median([getattr(r, attribute) for r in results])

    e2e = med("e2e_per_s")
    return (
        f"| **median** | **{name}** | {results[0].events:,} | **{med('accepted_per_s'):,.0f}** | "
        f"{med('p50_ms'):.1f} | {med('p95_ms'):.1f} | {med('p99_ms'):.1f} | | "
        f"{'**' + format(e2e, ',.0f') + '**' if e2e == e2e else '-'} | "
        f"{med('server_cpu_ms_per_event'):.2f} | "
        f"{max(r.peak_rss_mib or 0 for r in results):.0f} (max) | "
        f"{max(r.peak_pss_mib or 0 for r in results):.0f} (max) |"
    )


ServerFactory = Callable[[Path], AbstractContextManager[servers.Server]]


def measure(
    factory: ServerFactory,
    args: argparse.Namespace,
    *,
    shape: loadgen.Shape,
    count: int,
    read_side: str,
    workdir: Path,
) -> loadgen.Result:
    """One repeat against one fresh server."""
    with factory(workdir) as server:
        target = loadgen.Target(server.base_url, server.project_id, server.key, shape)
        requests = loadgen.build_requests(
            target, count=count, signatures=args.signatures, batch=args.batch
        )
        visible = None
        if read_side == "graphql":
            assert server.token is not None
            visible = loadgen.graphql_event_count(server.base_url, server.token, server.project_id)
        elif read_side == "bugsink":
            visible = servers.bugsink_event_count(server.extra["db"])
        before = 0
        if visible is not None:
            before = asyncio.run(visible())
        with servers.RssSampler(server.pids) as rss:
            result = loadgen.run_load(
                server.base_url,
                requests,
                concurrency=args.concurrency,
                procs=args.procs,
                client=args.client,
                visible=visible,
                expect_visible=before,
            )
        result.peak_rss_mib = rss.peak
        result.peak_pss_mib = rss.peak_pss
        result.server_cpu_ms_per_event = rss.cpu_seconds * 1000 / max(1, result.accepted)
        return result


def errorgraph(
    *, workers: int = 1, database: str | None = None, redis: str | None = None
) -> ServerFactory:
    @contextlib.contextmanager
    def factory(workdir: Path) -> Iterator[servers.Server]:
        url = servers.fresh_postgres_database(database) if database else None
        try:
            with servers.errorgraph_server(
                workdir,
                database_url=url,
                broadcast_url=redis or "memory://",
                workers=workers,
                extra_env=SERVER_ENV,
            ) as server:
                yield server
        finally:
            if url is not None:
                servers.drop_postgres_database(url)

    return factory


def compare(
    args: argparse.Namespace,
    title: str,
    sides: list[tuple[str, ServerFactory, loadgen.Shape, int, str]],
    ratio: Callable[[dict[str, list[loadgen.Result]]], list[str]] | None = None,
) -> None:
    """Run every side `--repeats` times, interleaved; print the table."""
    results: dict[str, list[loadgen.Result]] = {name: [] for name, *_ in sides}
    print(f"## {title}\n\n{machine()}\n", flush=True)
    print(
        f"{args.concurrency} concurrent requests from {args.procs} generator processes "
        f"({args.client} client), "
        f"{args.signatures} signatures, {args.repeats} repeats\n",
        flush=True,
    )
    print(COLUMNS)
    print("| " + " | ".join(["---"] * 2 + ["---:"] * 10) + " |", flush=True)
    for repeat in range(1, args.repeats + 1):
        for name, factory, shape, count, read_side in sides:
            with tempfile.TemporaryDirectory(prefix="errorgraph-bench-") as tmp:
                result = measure(
                    factory, args, shape=shape, count=count, read_side=read_side, workdir=Path(tmp)
                )
            results[name].append(result)
            print(row(str(repeat), name, result), flush=True)
    for name, *_ in sides:
        print(median_row(name, results[name]))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    if ratio is not None:
        print()
        for line in ratio(results):
            print(line)
    print(flush=True)


def run_hello(args: argparse.Namespace) -> None:
    def ratio(results: dict[str, list[loadgen.Result]]) -> list[str]:
        per_repeat = [
            (e.e2e_per_s or 0) / h.accepted_per_s
            for e, h in zip(results["errorgraph"], results["hello"], strict=True)
        ]
        return [
            "errorgraph end-to-end events/s ÷ hello-world requests/s: "
            f"median of repeats **{statistics.median(per_repeat) * 100:.0f} %** "
            f"(each: {', '.join(f'{r * 100:.0f} %' for r in per_repeat)})"
        ]

    compare(
        args,
        "1. Sentry envelopes: errorgraph (SQLite, one process) vs a bare uvicorn app",
        [
            ("hello", lambda w: servers.hello_server(w), "sentry", args.count, "none"),
            ("errorgraph", errorgraph(), "sentry", args.count, "graphql"),
        ],
        ratio,
    )


def run_bugsink(args: argparse.Namespace) -> None:
    def ratio(results: dict[str, list[loadgen.Result]]) -> list[str]:
        per_repeat = [
            (e.e2e_per_s or 0) / (b.e2e_per_s or float("nan"))
            for e, b in zip(results["errorgraph"], results["bugsink"], strict=True)
        ]
        return [
            "errorgraph end-to-end ÷ Bugsink end-to-end: median of repeats "
            f"**{statistics.median(per_repeat):.0f}x** "
            f"(each: {', '.join(f'{r:.0f}x' for r in per_repeat)})"
        ]

    def bugsink(workdir: Path) -> AbstractContextManager[servers.Server]:
        return servers.bugsink_server(workdir, workers=args.bugsink_workers)

    compare(
        args,
        "2. Sentry envelopes, end to end: errorgraph (SQLite, one process) vs Bugsink",
        [
            ("bugsink", bugsink, "sentry", args.bugsink_count, "bugsink"),
            ("errorgraph", errorgraph(), "sentry", args.count, "graphql"),
        ],
        ratio,
    )


def run_batch(args: argparse.Namespace) -> None:
    compare(
        args,
        f"3. Proliferate batches of {args.batch}: errorgraph (SQLite, one process)",
        [("errorgraph batch", errorgraph(), "batch", args.count, "graphql")],
    )


def run_processes(args: argparse.Namespace) -> None:
    if not args.redis:
        raise SystemExit("--redis is needed (several processes share pub/sub through it)")
    database = "PostgreSQL" if args.postgres else "SQLite"
    sides: list[tuple[str, ServerFactory, loadgen.Shape, int, str]] = []
    for workers in args.workers:
        factory = errorgraph(workers=workers, database=args.postgres, redis=args.redis)
        sides.append(
            (
                f"{workers} process{'es' if workers > 1 else ''}",
                factory,
                args.shape,
                args.count,
                "graphql",
            )
        )
    compare(
        args,
        f"6. errorgraph on {database} + Redis, {args.shape} requests, "
        + "/".join(map(str, args.workers))
        + " processes",
        sides,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", choices=["hello", "bugsink", "batch", "processes"])
    parser.add_argument("--count", type=int, help="events per repeat (default per run)")
    parser.add_argument("--bugsink-count", type=int, default=2000)
    parser.add_argument("--bugsink-workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--procs", type=int, default=2, help="generator processes")
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="the generator's HTTP client (see loadgen.Client)",
    )
    parser.add_argument("--signatures", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", choices=["sentry", "batch"], default="sentry")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--postgres", default=os.environ.get("ERRORGRAPH_TEST_POSTGRES_URL"))
    parser.add_argument("--redis")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="ERRORGRAPH_NAME=VALUE",
        help="a setting for errorgraph's servers (repeatable)",
    )
    args = parser.parse_args()
    for assignment in args.server_env:
        name, _, value = assignment.partition("=")
        SERVER_ENV[name] = value
    defaults = {"hello": 20000, "bugsink": 20000, "batch": 100_000, "processes": 20000}
    args.count = args.count or defaults[args.run]
    {"hello": run_hello, "bugsink": run_bugsink, "batch": run_batch, "processes": run_processes}[
        args.run
    ](args)


if __name__ == "__main__":
    main()
