"""The app's lifespan: what it sets up for a server process besides the runtime."""

from __future__ import annotations

import gc
import sqlite3
import subprocess
import sys

import orjson
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.db import SCHEMA_REVISION
from app.main import create_app


async def test_server_processes_freeze_the_start_up_heap(settings: Settings):
    before = gc.get_threshold()
    try:
        async with LifespanManager(create_app(settings)):
            assert gc.get_freeze_count() == 0  # tests build many apps: never frozen
        served = settings.model_copy(update={"gc_freeze": True})
        async with LifespanManager(create_app(served)):
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] == 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_serve_turns_it_on(monkeypatch):
    monkeypatch.setenv("ERRORGRAPH_GC_FREEZE", "true")
    assert Settings(_env_file=None).gc_freeze is True  # type: ignore[call-arg]


# A new process, as each worker of `serve` is: the runtime started and stopped, then
# which of the libraries it may do without it loaded.
_START = """
import asyncio, sys
from app.config import Settings
from app.services.runtime import Runtime

async def main():
    runtime = await Runtime.start(Settings(database_url=sys.argv[1], _env_file=None))
    await runtime.stop()
    names = ("alembic", "redis", "httpx", "aiosmtplib")
    print(" ".join(name for name in names if name in sys.modules))

asyncio.run(main())
"""


def test_a_process_loads_libraries_only_when_it_needs_them(settings: Settings):
    """Alembic only to migrate, the Redis client only for a redis:// pub/sub, the HTTP
    and SMTP clients only to send an alert: each is several MiB in every process (~9, ~7
    and ~8 with its TLS context). That the alert channels load theirs when they send is
    shown by the alert tests, which send through each."""

    def loaded() -> set[str]:
        found = subprocess.run(
            [sys.executable, "-c", _START, settings.database_url],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return set(found.stdout.split())

    assert settings.broadcast_url == "memory://"
    assert loaded() == {"alembic"}  # a new file: migrated
    assert loaded() == set()  # at the newest migration
    path = settings.database_url.split(":///", 1)[1]
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0004'")
    assert loaded() == {"alembic"}  # an older one: migrated again
    with sqlite3.connect(path) as connection:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == (SCHEMA_REVISION,)


# A worker's start (`app.worker.main`), then an error logged through its logging.
_WORKER = """
import logging, logging.config, sys
import orjson
from app.worker import without_console_extras

options = orjson.loads(sys.argv[1])
without_console_extras(options)
import app.main  # as uvicorn imports the app
logging.config.dictConfig(options["log_config"])
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("errorgraph.test").exception("it failed")
print(" ".join(name for name in ("rich", "pygments") if sys.modules.get(name) is not None))
"""


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_worker_that_logs_json_does_without_rich(log_format: str):
    """structlog loads rich and pygments (~5 MiB) for tracebacks on a terminal; a worker
    that logs JSON lines does not load them, and still logs a traceback in its line."""
    from app.logging import logging_config

    options = {"log_config": logging_config(level="info", log_format=log_format)}
    ran = subprocess.run(
        [sys.executable, "-c", _WORKER, orjson.dumps(options).decode()],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded = set(ran.stdout.split())
    if log_format == "json":
        assert loaded == set()
        [line] = [orjson.loads(text) for text in ran.stderr.splitlines() if text.startswith("{")]
        assert line["event"] == "it failed"
        assert "ZeroDivisionError: division by zero" in line["exception"]
    else:
        assert loaded == {"rich", "pygments"}
        assert "ZeroDivisionError" in ran.stderr
