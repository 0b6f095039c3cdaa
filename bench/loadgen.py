"""The load generator: realistic events over HTTP, with the figures that matter.

Every event is the envelope in `fixtures/python_event.envelope` (written by the real
Python SDK, see `capture_fixture.py`: an 11-frame stack with context lines and local
variables, tags, user, contexts, breadcrumbs, modules; 12.8 KB) with a fresh event_id
and timestamp, one of G signatures (the exception type and innermost function carry the
signature number, the message is fixed per signature, so both errorgraph's frame grouping
and a tracker that groups on type and message make exactly G issues) and one of 1,000
users. Two shapes:

- `sentry`: one gzip'd envelope per request to `/api/{project}/envelope/`, authenticated
  with `X-Sentry-Auth` as the SDK does;
- `batch`: Proliferate batches (`POST /api/v1/errors/batch`, JSON: the dialect takes no
  Content-Encoding) of `--batch` events, each carrying the same exception, the stack as
  Python traceback text, user, breadcrumbs and tags/contexts in `extra`.

Bodies are built before the clock starts, so the generator spends its CPU on HTTP only.
`--concurrency` requests are in flight at any time over as many keep-alive connections,
spread over `--procs` generator processes (one Python process cannot keep a fast server
busy on its own). Reported: accepted events/s (2xx answers, counting a batch's accepted
events), request latency p50/p95/p99, answers by status, and end-to-end committed
events/s: accepted events divided by the time from the first request until all of them
are visible through the target's read side (errorgraph: GraphQL `events { totalCount }`).

Used by `ingest.py`; on its own, against a running errorgraph:

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8000 --project-id 1 \\
        --key <ingest key> --token <admin token> --shape sentry --count 20000 \\
        --concurrency 32 --signatures 100
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import multiprocessing
import os
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httptools
import httpx
import orjson
import uvloop

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "python_event.envelope"
USERS = 1000
Shape = Literal["sentry", "batch"]
# `raw`: asyncio on uvloop, each request's bytes written whole and the answer read by
# httptools, under 0.04 ms of CPU per request; `httpx`: httpx's AsyncClient, ~1.3 ms.
Client = Literal["raw", "httpx"]


@dataclass(frozen=True)
class Target:
    """Where to send: base URL, the project and its key, how events are read back."""

    base_url: str
    project_id: int | str
    key: str
    # Sentry's `sentry_key`; Proliferate's `api_key` is the same ingest key.
    shape: Shape = "sentry"


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    headers: dict[str, str]
    events: int


def _template() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    header_line, item_line, payload = FIXTURE.read_bytes().split(b"\n", 2)
    return orjson.loads(header_line), orjson.loads(item_line), orjson.loads(payload.rstrip())


def _with_order(value: Any, order: str, user: int) -> Any:
    """Frame variables as this event's order and user would have them."""
    if isinstance(value, dict):
        return {key: _with_order(item, order, user) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_order(item, order, user) for item in value]
    if value == TEMPLATE_ORDER:
        return order
    if value == TEMPLATE_USER:
        return f"'u-{user}'"
    return value


# What the captured event's variables hold for its one order and user.
TEMPLATE_ORDER = "1009"
TEMPLATE_USER = "'u-1042'"


def sentry_event(
    template: dict[str, Any],
    *,
    signature: int,
    user: int,
    now: datetime,
    order: int = 1009,
) -> dict[str, Any]:
    """The template as signature `signature`, user `user` and order `order`, new id and
    time: what differs from one real event of a bug to the next (the ids in its frames'
    variables, its breadcrumbs' times), so that nothing downstream sees the same data
    twice where a real application would not send it."""
    event: dict[str, Any] = orjson.loads(orjson.dumps(template))
    event["event_id"] = uuid.uuid4().hex
    event["timestamp"] = now.isoformat().replace("+00:00", "Z")
    for value in event["exception"]["values"]:
        for frame in (value.get("stacktrace") or {}).get("frames") or []:
            if frame.get("vars"):
                frame["vars"] = _with_order(frame["vars"], str(order), user)
    crumbs = event["breadcrumbs"]["values"]
    for index, crumb in enumerate(crumbs):
        # Seconds before the event, in the template's order, microseconds from the order.
        at = now.timestamp() - (len(crumbs) - index) - (order % 997) / 1e6
        crumb["timestamp"] = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    exception = event["exception"]["values"][-1]
    exception["type"] = f"PaymentDeclined{signature:05d}"
    exception["value"] = f"card declined: card_declined (gateway {signature})"
    frames = exception["stacktrace"]["frames"]
    frames[-1]["function"] = f"gateway_call_{signature}"
    event["user"] = {
        "id": f"u-{user}",
        "email": f"user{user}@example.com",
        "username": f"user{user}",
        "ip_address": f"10.1.{user // 250}.{user % 250}",
    }
    return event


def envelope_body(event: dict[str, Any], header: dict[str, Any], *, sent_at: datetime) -> bytes:
    """An envelope as the SDK writes it: header, item header with length, payload; gzip'd."""
    payload = orjson.dumps(event)
    head = {**header, "event_id": event["event_id"], "sent_at": sent_at.isoformat()}
    item = {"type": "event", "content_type": "application/json", "length": len(payload)}
    raw = orjson.dumps(head) + b"\n" + orjson.dumps(item) + b"\n" + payload + b"\n"
    return gzip.compress(raw, compresslevel=6)


def traceback_text(exception: dict[str, Any]) -> str:
    lines = ["Traceback (most recent call last):"]
    for frame in exception["stacktrace"]["frames"]:
        lines.append(
            f'  File "{frame["abs_path"]}", line {frame["lineno"]}, in {frame["function"]}'
        )
        if frame.get("context_line"):
            lines.append("    " + frame["context_line"].strip())
    lines.append(f"{exception['module']}.{exception['type']}: {exception['value']}")
    return "\n".join(lines)


def proliferate_event(event: dict[str, Any], *, api_key: str) -> dict[str, Any]:
    """The same event in the Proliferate shape (no tags field: tags go to `extra`)."""
    exception = event["exception"]["values"][-1]
    return {
        "api_key": api_key,
        "event_id": event["event_id"],
        "timestamp": event["timestamp"],
        "type": "exception",
        "level": event["level"],
        "environment": event.get("environment"),
        "release": event.get("release"),
        "url": "https://shop.example/checkout",
        "exception": {
            "type": exception["type"],
            "message": exception["value"],
            "stack": traceback_text(exception),
        },
        "user": event["user"],
        "breadcrumbs": event["breadcrumbs"]["values"],
        "extra": {"tags": event["tags"], "contexts": event["contexts"]},
    }


def build_requests(
    target: Target, *, count: int, signatures: int, batch: int = 100, seed: int = 1
) -> list[Request]:
    """`count` events for `target` in its shape, signatures and users drawn at random."""
    header, _item, template = _template()
    rng = random.Random(seed)
    now = datetime.now(UTC)
    events = [
        sentry_event(
            template,
            signature=rng.randrange(signatures),
            user=rng.randrange(USERS),
            # Each its own time, a millisecond apart, as events captured one after another.
            now=now - timedelta(milliseconds=count - index),
            order=rng.randrange(1_000_000),
        )
        for index in range(count)
    ]
    if target.shape == "sentry":
        auth = (
            f"Sentry sentry_version=7, sentry_client=sentry.python/2.75.0, sentry_key={target.key}"
        )
        headers = {
            "Content-Type": "application/x-sentry-envelope",
            "Content-Encoding": "gzip",
            "X-Sentry-Auth": auth,
            "User-Agent": "sentry.python/2.75.0",
        }
        path = f"/api/{target.project_id}/envelope/"
        return [Request(path, envelope_body(e, header, sent_at=now), headers, 1) for e in events]
    requests = []
    for start in range(0, count, batch):
        chunk = [proliferate_event(e, api_key=target.key) for e in events[start : start + batch]]
        requests.append(
            Request(
                "/api/v1/errors/batch",
                orjson.dumps(chunk),
                {"Content-Type": "application/json"},
                len(chunk),
            )
        )
    return requests


def accepted_events(request: Request, status: int, body: bytes) -> int:
    if not 200 <= status < 300:
        return 0
    if request.events == 1:
        return 1
    results = orjson.loads(body).get("results") or []
    return sum(1 for result in results if result.get("status") == "ok")


@dataclass
class Sent:
    """What one generator process saw."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    first: float = 0.0
    last: float = 0.0


async def _send_all(
    base_url: str,
    requests: Sequence[Request],
    concurrency: int,
    start_at: float,
    client: Client = "raw",
) -> Sent:
    sent = Sent()
    queue = iter(requests)
    if client == "raw":
        await _send_raw(base_url, queue, concurrency, start_at, sent)
        return sent
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as session:

        async def worker() -> None:
            for request in queue:
                began = time.perf_counter()
                try:
                    response = await session.post(
                        request.path, content=request.body, headers=request.headers
                    )
                except httpx.HTTPError as exc:
                    sent.statuses[type(exc).__name__] += 1
                    continue
                sent.latencies.append(time.perf_counter() - began)
                sent.statuses[str(response.status_code)] += 1
                sent.accepted += accepted_events(request, response.status_code, response.content)

        # All processes start together: wait for the agreed moment.
        await asyncio.sleep(max(0.0, start_at - time.time()))
        sent.first = time.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        sent.last = time.time()
    return sent


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request's bytes written whole, the answer
    read by httptools (the parser uvicorn uses), one request at a time."""

    def __init__(self) -> None:
        # uvloop's transports are not `asyncio.Transport` instances, though they act as one.
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: Exception | None = None
        # Whether an answer came on it (so a reset may mean it was closed while idle), and
        # whether the last answer lets it be used again (gunicorn's sync workers say no).
        self.used = False
        self.keep_alive = True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.answer is not None
        self.used = True
        self.keep_alive = self.parser.should_keep_alive()
        self.answer.set_result((self.parser.get_status_code(), b"".join(self.body)))
        self.body = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("the server closed the connection")
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(self.lost)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.answer


def _raw_request(request: Request, host: str) -> bytes:
    """The request's bytes as any HTTP/1.1 client writes them."""
    lines = [f"POST {request.path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    lines.append(f"Content-Length: {len(request.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + request.body


async def _send_raw(
    base_url: str, queue: Any, concurrency: int, start_at: float, sent: Sent
) -> None:
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    pending = list(queue)
    raws = iter([(request, _raw_request(request, f"{host}:{port}")) for request in pending])
    loop = asyncio.get_running_loop()

    async def connect() -> _Connection:
        _transport, connection = await loop.create_connection(_Connection, host, port)
        return connection

    connections = [await connect() for _ in range(concurrency)]

    async def worker(connection: _Connection) -> None:
        for request, raw in raws:
            began = time.perf_counter()
            try:
                if connection.lost is not None or not connection.keep_alive:
                    connection.close()
                    connection = await connect()
                    began = time.perf_counter()
                try:
                    status, body = await connection.send(raw)
                except OSError:
                    if not connection.used:
                        raise
                    # A kept-alive connection the server had closed meanwhile: the request
                    # was not read, so it is sent again on a new one, as clients do.
                    connection.close()
                    connection = await connect()
                    status, body = await connection.send(raw)
            except (OSError, httptools.HttpParserError) as exc:
                sent.statuses[type(exc).__name__] += 1
                connection.lost = connection.lost or exc
                continue
            sent.latencies.append(time.perf_counter() - began)
            sent.statuses[str(status)] += 1
            sent.accepted += accepted_events(request, status, body)
        connection.close()

    await asyncio.sleep(max(0.0, start_at - time.time()))
    sent.first = time.time()
    await asyncio.gather(*(worker(connection) for connection in connections))
    sent.last = time.time()


def _process_main(
    base_url: str,
    requests: list[Request],
    concurrency: int,
    start_at: float,
    client: Client,
    out: Any,
) -> None:
    if client == "raw":
        uvloop.install()
    sent = asyncio.run(_send_all(base_url, requests, concurrency, start_at, client))
    out.send(sent)
    out.close()


@dataclass
class Result:
    requests: int
    events: int
    accepted: int
    seconds: float
    accepted_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[str, int]
    e2e_seconds: float | None = None
    e2e_per_s: float | None = None
    peak_rss_mib: float | None = None
    peak_pss_mib: float | None = None
    server_cpu_ms_per_event: float | None = None

    def status_text(self) -> str:
        return " ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run_load(
    base_url: str,
    requests: list[Request],
    *,
    concurrency: int,
    procs: int = 2,
    visible: Callable[[], Awaitable[int]] | None = None,
    expect_visible: int = 0,
    visible_timeout: float = 1800.0,
    client: Client = "raw",
) -> Result:
    """Send `requests` and wait until `visible()` reaches `expect_visible` + accepted."""
    procs = max(1, min(procs, concurrency, len(requests)))
    context = multiprocessing.get_context("fork")
    pipes, workers = [], []
    start_at = time.time() + 0.5 + 0.02 * len(requests) / 1000
    for index in range(procs):
        share = requests[index::procs]
        mine = concurrency // procs + (1 if index < concurrency % procs else 0)
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_process_main, args=(base_url, share, mine, start_at, client, send)
        )
        process.start()
        send.close()
        pipes.append(receive)
        workers.append(process)
    parts: list[Sent] = [pipe.recv() for pipe in pipes]
    for process in workers:
        process.join()
    first = min(part.first for part in parts)
    last = max(part.last for part in parts)
    latencies = [latency for part in parts for latency in part.latencies]
    statuses: Counter[str] = Counter()
    for part in parts:
        statuses.update(part.statuses)
    accepted = sum(part.accepted for part in parts)
    seconds = last - first
    result = Result(
        requests=len(requests),
        events=sum(request.events for request in requests),
        accepted=accepted,
        seconds=seconds,
        accepted_per_s=accepted / seconds,
        p50_ms=percentile(latencies, 50) * 1000,
        p95_ms=percentile(latencies, 95) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        statuses=dict(statuses),
    )
    if visible is not None:
        done = asyncio.run(_wait_visible(visible, expect_visible + accepted, limit=visible_timeout))
        result.e2e_seconds = done - first
        result.e2e_per_s = accepted / result.e2e_seconds
    return result


async def _wait_visible(
    visible: Callable[[], Awaitable[int]], expected: int, *, limit: float
) -> float:
    """The wall-clock moment `visible()` first reached `expected`."""
    deadline = time.time() + limit
    while True:
        seen = await visible()
        now = time.time()
        if seen >= expected:
            return now
        if now > deadline:
            raise SystemExit(f"only {seen} of {expected} events visible after {limit:g}s")
        await asyncio.sleep(0.05)


def graphql_event_count(base_url: str, token: str, project_id: int | str) -> Callable[[], Any]:
    """errorgraph's read side: `events(projectId) { totalCount }` over GraphQL."""
    query = "query($p: ID!) { events(projectId: $p, first: 1) { totalCount } }"

    async def count() -> int:
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.post(
                base_url + "/graphql",
                json={"query": query, "variables": {"p": str(project_id)}},
                headers={"Authorization": f"Bearer {token}"},
            )
        data = response.json()
        if "errors" in data:
            raise SystemExit(f"GraphQL: {data['errors']}")
        return int(data["data"]["events"]["totalCount"])

    return count


def median(values: Sequence[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--project-id", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token", help="admin token: wait until the events are visible")
    parser.add_argument("--shape", choices=["sentry", "batch"], default="sentry")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument("--signatures", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    target = Target(args.url, args.project_id, args.key, args.shape)
    requests = build_requests(
        target, count=args.count, signatures=args.signatures, batch=args.batch
    )
    visible = None
    before = 0
    if args.token:
        visible = graphql_event_count(args.url, args.token, args.project_id)
        before = asyncio.run(visible())
    result = run_load(
        args.url,
        requests,
        concurrency=args.concurrency,
        procs=args.procs,
        visible=visible,
        expect_visible=before,
        client=args.client,
    )
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} cores shared with the server")
    for name, value in vars(result).items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
