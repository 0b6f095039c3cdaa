"""The benchmark's load generator against a real errorgraph server: what it reports is
what the server stored, with either HTTP client (`bench/README.md` quotes both)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import servers  # noqa: E402

NO_LIMITS = {"ERRORGRAPH_CLIENT_RATE_LIMITS": '{"default": "", "error_tracker": ""}'}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    with servers.errorgraph_server(
        tmp_path_factory.mktemp("bench"), extra_env=NO_LIMITS
    ) as running:
        yield running


@pytest.mark.parametrize("client", ["raw", "httpx"])
@pytest.mark.parametrize(("shape", "count", "requests"), [("sentry", 40, 40), ("batch", 60, 3)])
def test_load_is_counted_as_the_server_stores_it(
    server: servers.Server, client: loadgen.Client, shape: loadgen.Shape, count: int, requests: int
) -> None:
    target = loadgen.Target(server.base_url, server.project_id, server.key, shape)
    built = loadgen.build_requests(target, count=count, signatures=5, batch=20)
    assert len(built) == requests
    assert server.token is not None
    visible = loadgen.graphql_event_count(server.base_url, server.token, server.project_id)
    before = asyncio.run(visible())
    result = loadgen.run_load(
        server.base_url,
        built,
        concurrency=4,
        procs=2,
        visible=visible,
        expect_visible=before,
        client=client,
    )
    status = "200" if shape == "sentry" else "202"
    assert result.statuses == {status: requests}
    assert result.accepted == count
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.e2e_per_s is not None and result.e2e_per_s > 0
    assert asyncio.run(visible()) == before + count


def test_a_refused_request_is_counted_by_its_status(server: servers.Server) -> None:
    target = loadgen.Target(server.base_url, server.project_id, "0" * 32, "sentry")
    built = loadgen.build_requests(target, count=6, signatures=2)
    result = loadgen.run_load(server.base_url, built, concurrency=2, procs=1, client="raw")
    assert result.accepted == 0
    assert result.statuses == {"401": 6}


def test_a_server_that_closes_each_connection_gets_every_request() -> None:
    """gunicorn's sync workers (Bugsink's) answer `Connection: close`: the raw client
    opens a new connection for the next request instead of losing it."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answered = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                answered.append(len(body))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    target = loadgen.Target(f"http://127.0.0.1:{port}", 1, "0" * 32, "sentry")
    built = loadgen.build_requests(target, count=12, signatures=2)
    try:
        result = loadgen.run_load(target.base_url, built, concurrency=3, procs=1, client="raw")
    finally:
        listener.close()
    assert result.statuses == {"200": 12}
    assert result.accepted == 12
    assert sorted(answered) == sorted(len(request.body) for request in built)


SHARING = """
import os, sys
block = bytearray(64 << 20)
for offset in range(0, len(block), 4096):
    block[offset] = 1  # resident, and private to this process until it forks
child = os.fork()
if child == 0:
    sys.stdin.read()  # the child only reads: the 64 MiB stay shared with its parent
    os._exit(0)
print(child, flush=True)
sys.stdin.read()
os.waitpid(child, 0)
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's /proc")
def test_shared_pages_count_once_in_the_proportional_size() -> None:
    """Two processes sharing 64 MiB (a parent and the child it forked, as a server's
    workers share what they mapped before): the sum of their RSS counts the block twice,
    their PSS once, which is what `ingest.py` reports beside the RSS for several workers."""
    import subprocess

    process = subprocess.Popen(
        [sys.executable, "-c", SHARING], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        child = int(process.stdout.readline())
        assert servers._tree([process.pid]) == [process.pid, child]
        rss = servers.tree_rss_mib([process.pid])
        pss = servers.tree_pss_mib([process.pid])
        assert rss > 2 * 64
        assert 64 < pss < rss - 56
        with servers.RssSampler([process.pid]) as sampler:
            pass
        assert sampler.peak > 2 * 64
        assert 64 < sampler.peak_pss < sampler.peak - 56
    finally:
        process.communicate(b"")
