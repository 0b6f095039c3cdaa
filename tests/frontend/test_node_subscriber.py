"""frontend-examples/node-subscriber: the real graphql-ws client prints a new issue."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import ERRORGRAPH, ROOT, LiveServer, require_or_skip

EXAMPLE = ROOT / "frontend-examples" / "node-subscriber"


@pytest.fixture(scope="module")
def node_example() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        require_or_skip("node and npm are not installed")
    if not (EXAMPLE / "node_modules" / "graphql-ws").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, check=True, capture_output=True
        )
    return EXAMPLE


def project(server: LiveServer) -> dict:
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "Node", "--json"],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(created.stdout)


class Lines:
    """A process's output lines, read on threads so the test can wait with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        for stream, sink in ((process.stdout, self.out), (process.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _pump(stream, sink) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            sink.put(line.rstrip("\n"))

    @staticmethod
    def wait(sink: queue.Queue[str], text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = sink.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not printed; got {seen}")


@pytest.fixture
def run_subscriber(node_example: Path) -> Iterator:
    processes: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], Lines]:
        process = subprocess.Popen(
            ["node", "subscribe.mjs", *args],
            cwd=node_example,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ},
        )
        processes.append(process)
        return process, Lines(process)

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def send(server: LiveServer, key: str, function: str) -> None:
    response = httpx.post(
        server.base_url + "/api/v1/errors",
        json={
            "api_key": key,
            "event_id": function,
            "timestamp": "2026-03-01T12:00:00Z",
            "type": "exception",
            "exception": {
                "type": "TypeError",
                "message": f"{function} failed",
                "stack": f"TypeError: {function} failed\n    at {function} (app.js:3:7)",
            },
        },
    )
    assert response.status_code == 202


def test_prints_new_issues(live_server: LiveServer, run_subscriber):
    info = project(live_server)
    _, lines = run_subscriber(
        "--url", live_server.base_url, "--token", info["token"], "--project", str(info["id"])
    )
    Lines.wait(lines.err, "subscribed")
    time.sleep(0.3)
    send(live_server, info["ingest_key"], "renderCart")
    line = Lines.wait(lines.out, "new issue")
    assert "[node] ERROR: TypeError: renderCart failed at renderCart (app.js)" in line


def test_events_mode_and_json(live_server: LiveServer, run_subscriber):
    info = project(live_server)
    _, lines = run_subscriber(
        "--url", live_server.base_url, "--token", info["token"], "--events", "--json"
    )
    Lines.wait(lines.err, "subscribed")
    time.sleep(0.3)
    send(live_server, info["ingest_key"], "checkout")
    data = json.loads(Lines.wait(lines.out, "eventCaptured"))
    assert data["eventCaptured"]["eventId"] == "checkout"
    assert data["eventCaptured"]["group"]["title"] == "TypeError: checkout failed"


def test_refused_token_exits_1(live_server: LiveServer, run_subscriber):
    process, lines = run_subscriber("--url", live_server.base_url, "--token", "egt_nope")
    assert process.wait(timeout=20) == 1
    Lines.wait(lines.err, "refused the token")
