"""Logs: one line per request with its id; JSON off a terminal, text on one."""

from __future__ import annotations

import io
import logging
import os
import re
import select
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest
from support import ERRORGRAPH, AppClient, cli_env, free_port, running_server

from app.config import Settings
from app.logging import build_formatter, logging_config, wants_json
from app.services.keys import CreatedProject

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "errorgraph.access"]


async def test_one_line_per_request_with_its_fields(
    app_client: AppClient, app_project: CreatedProject, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="errorgraph.access")
    body = {
        "api_key": app_project.ingest_key.secret,
        "event_id": "log-1",
        "timestamp": "2025-01-15T10:30:00Z",
        "type": "exception",
        "exception": {"type": "TypeError", "message": "x is undefined"},
    }
    response = await app_client.http.post(
        "/api/v1/errors", json=body, headers={"X-Request-ID": "req-42"}
    )
    assert response.status_code == 202
    assert response.headers["x-request-id"] == "req-42"

    [record] = access_records(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage() == "POST /api/v1/errors 202"
    fields = {
        name: getattr(record, name)
        for name in ("request_id", "method", "path", "route", "status", "dialect", "client")
    }
    assert fields == {
        "request_id": "req-42",
        "method": "POST",
        "path": "/api/v1/errors",
        "route": "/api/v1/errors",
        "status": 202,
        "dialect": "proliferate",
        "client": "127.0.0.1",
    }
    assert record.duration_ms >= 0  # type: ignore[attr-defined]


async def test_request_ids_are_made_when_missing_or_unusable(
    app_client: AppClient, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="errorgraph.access")
    first = await app_client.http.get("/health/live")
    second = await app_client.http.get("/health/live")
    forged = await app_client.http.get("/health/live", headers={"X-Request-ID": 'a" level="error'})
    huge = await app_client.http.get("/health/live", headers={"X-Request-ID": "a" * 500})
    ids = [r.headers["x-request-id"] for r in (first, second, forged, huge)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert len(set(ids)) == 4
    assert [r.getMessage() for r in access_records(caplog)] == ["GET /health/live 200"] * 4


async def test_requests_without_a_dialect_and_unknown_paths(
    app_client: AppClient, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="errorgraph.access")
    await app_client.http.get("/health")
    await app_client.http.get("/no/such/path?key=secret")
    await app_client.http.get("/api/1/store/?sentry_key=pk_secret")
    health, unknown, store = access_records(caplog)
    assert not hasattr(health, "dialect")
    assert (unknown.path, unknown.route, unknown.status) == ("/no/such/path", None, 404)  # type: ignore[attr-defined]
    assert store.dialect == "sentry"  # type: ignore[attr-defined]
    assert all("secret" not in r.getMessage() for r in (unknown, store))


def test_json_lines_carry_the_request_id_and_extras():
    import structlog

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(build_formatter(json=True))
    logger = logging.getLogger("errorgraph.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with structlog.contextvars.bound_contextvars(request_id="r-1"):
            logger.warning("stored %d events", 3, extra={"project_id": 7})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "stored 3 events"
    assert first["level"] == "warning"
    assert first["logger"] == "errorgraph.test-json"
    assert first["request_id"] == "r-1"
    assert first["project_id"] == 7
    assert "timestamp" in first
    assert "request_id" not in second
    assert "ValueError: boom" in second["exception"]


def test_format_follows_the_stream_unless_told():
    read_end, write_end = os.pipe()
    main, replica = os.openpty()
    try:
        with (
            os.fdopen(write_end, "w", closefd=False) as pipe,
            os.fdopen(replica, "w", closefd=False) as terminal,
        ):
            assert wants_json(pipe)
            assert not wants_json(terminal)
            assert wants_json(terminal, "json")
            assert not wants_json(pipe, "console")
    finally:
        for fd in (read_end, write_end, main, replica):
            os.close(fd)
    config = logging_config(level="warning", log_format="json")
    assert config["root"]["level"] == "WARNING"
    assert config["loggers"]["uvicorn.access"]["propagate"] is False


def test_the_supervisor_writes_the_workers_shape_without_structlog():
    """`serve --workers N`'s supervisor formats its lines with the standard library alone
    (app/supervisor.py): the same keys and values as a worker's structlog lines."""
    from app.supervisor import LineFormatter

    record = logging.LogRecord(
        "app.supervisor", logging.WARNING, __file__, 1, "worker [%d] exited", (7,), None
    )
    ours = orjson.loads(LineFormatter(as_json=True).format(record))
    theirs = orjson.loads(build_formatter(json=True).format(record))
    assert ours.keys() == theirs.keys() == {"event", "timestamp", "level", "logger"}
    assert {k: v for k, v in ours.items() if k != "timestamp"} == {
        k: v for k, v in theirs.items() if k != "timestamp"
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ours["timestamp"])
    assert ours["timestamp"][:4] == theirs["timestamp"][:4]
    text = LineFormatter(as_json=False).format(record)
    assert text.endswith("[warning  ] worker [7] exited [app.supervisor]")


def test_served_logs_are_json_lines_without_uvicorn_access_lines(
    settings: Settings, tmp_path: Path
):
    with running_server(settings, tmp_path) as server:
        response = httpx.get(server.base_url + "/health", headers={"X-Request-ID": "live-7"})
        assert response.headers["x-request-id"] == "live-7"
    text = server.log.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line.get("logger") == "uvicorn.error" for line in lines)
    [request] = [line for line in lines if line.get("request_id") == "live-7"]
    assert request["event"] == "GET /health 200"
    assert request["logger"] == "errorgraph.access"
    assert request["status"] == 200
    assert request["level"] == "info"
    assert "HTTP/1.1" not in text  # uvicorn's access log is off


def test_served_logs_are_text_on_a_terminal(settings: Settings, tmp_path: Path):
    port = free_port()
    env = cli_env(settings.model_copy(update={"port": port}))
    main, replica = os.openpty()
    process = subprocess.Popen(
        [ERRORGRAPH, "serve"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=replica
    )
    os.close(replica)
    seen = ""
    try:
        deadline = time.monotonic() + 60
        asked = False
        while "GET /health/live 200" not in ANSI.sub("", seen):
            assert process.poll() is None, seen
            assert time.monotonic() < deadline, seen
            if not asked and "Application startup complete" in seen:
                httpx.get(f"http://127.0.0.1:{port}/health/live", headers={"X-Request-ID": "tty-1"})
                asked = True
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                seen += os.read(main, 65536).decode(errors="replace")
    finally:
        process.terminate()
        process.wait(timeout=30)
        os.close(main)
    plain = ANSI.sub("", seen)
    line = next(line for line in plain.splitlines() if "GET /health/live 200" in line)
    assert not line.lstrip().startswith("{")
    assert "request_id=tty-1" in line
    assert "status=200" in line
