"""A worker process of `errorgraph serve --workers N`, started by `app.supervisor`:
`python -m app.worker '<uvicorn.run options as JSON>' <port> <fd>`.

It listens on a socket of its own bound to the shared address (SO_REUSEPORT, see the
supervisor's docstring) and serves the app with uvicorn. `fd` is 8 bytes of memory it
shares with the supervisor: once the app has started, and then every second, its event
loop writes the time there, which tells the supervisor both that it serves and that its
event loop still runs.
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import mmap
import os
import sys
import time
from typing import Any

import orjson
import uvicorn

from app.supervisor import APP, BEAT_SECONDS, STARTUP_FAILURE, bind, log, logs_json


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, heartbeat: ctypes.c_double) -> None:
        super().__init__(config)
        self._heartbeat = heartbeat
        self._beating: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._heartbeat.value = time.monotonic()
            self._beating = asyncio.create_task(self._beat(), name="errorgraph-heartbeat")

    async def _beat(self) -> None:
        while True:
            self._heartbeat.value = time.monotonic()
            await asyncio.sleep(BEAT_SECONDS)


def serve_worker(options: dict[str, Any], port: int, heartbeat: ctypes.c_double) -> None:
    """Its own socket on the shared address, then uvicorn's server."""
    # SIGABRT from the supervisor (a hung event loop) writes every thread's stack.
    faulthandler.enable()
    config = uvicorn.Config(APP, **{**options, "port": port})
    try:
        sock = bind(config.host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, port, exc)
        sys.exit(STARTUP_FAILURE)
    _Server(config, heartbeat).run(sockets=[sock])


def without_console_extras(options: dict[str, Any]) -> None:
    """structlog imports rich and pygments (~5 MiB) for its console renderer's
    tracebacks, whichever renderer is used; a worker that logs JSON lines never shows
    them. Marked absent before the app is imported, they are not loaded, and structlog
    does without (as where rich is not installed)."""
    formatter = options.get("log_config", {}).get("formatters", {}).get("errorgraph", {})
    if logs_json(formatter.get("log_format", "auto")):
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    options, port, fd = argv if argv is not None else sys.argv[1:]
    shared = mmap.mmap(int(fd), ctypes.sizeof(ctypes.c_double))
    os.close(int(fd))
    parsed = orjson.loads(options)
    without_console_extras(parsed)
    serve_worker(parsed, int(port), ctypes.c_double.from_buffer(shared))


if __name__ == "__main__":
    main()
