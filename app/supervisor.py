"""The supervisor of `errorgraph serve --workers N`, in a process of its own.

`serve` sets up in the CLI's process (migrations, the demo project), which imports the
whole app; kept as the supervisor, that process held ~90 MiB for the server's lifetime,
though a supervisor only starts, watches and stops the workers. With more than one worker
`serve` replaces itself (exec) with this module, which imports uvicorn and the logging
set-up alone: each worker imports the app for itself.

Each worker listens on a socket of its own, bound to the same address with SO_REUSEPORT,
so that the kernel spreads new connections over the workers evenly. uvicorn's supervisor
hands every worker one shared socket, and whichever worker is idle when a client
connects takes the connection: clients that keep their connections open (the SDKs'
transports, a load generator) ended up 27/5 to 31/1 over two workers, one worker doing
the work of both. uvicorn's supervisor has no way to give each worker its own socket, so
this one does what it does for this case: starts the workers, starts another when one
dies, restarts them one at a time on SIGHUP, stops them on SIGINT or SIGTERM, and stops
everything if a worker cannot start (the same failure would repeat). Where the platform
lacks SO_REUSEPORT, uvicorn's supervisor runs.

A worker that lives but no longer serves is replaced too. Each worker's event loop writes
the time into memory it shares with the supervisor every second; when it has not for
`WORKER_TIMEOUT` seconds (work that never yields, a C call that never returns, holding
the interpreter lock), the supervisor sends it SIGABRT, on which `faulthandler` writes
every thread's stack to the worker's stderr, so that the cause can be found, then SIGKILL
if it still lives, and starts another. uvicorn's supervisor pings a thread of each worker
instead, which answers while the event loop is stuck in Python code.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from ctypes import c_double
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as ProcessEvent
from types import FrameType
from typing import Any

import orjson
import uvicorn
from uvicorn.config import STARTUP_FAILURE

APP = "app.main:app"
# How long a worker started by SIGHUP may take to serve before the restart is given up.
STARTUP_SECONDS = 120
# How often a worker's event loop shows it runs, and how long a worker sent SIGABRT for
# not running has to write its stacks and exit before it is killed.
BEAT_SECONDS = 1.0
ABORT_SECONDS = 5.0

log = logging.getLogger("app.supervisor")  # also when run as __main__

# New processes, as uvicorn's are: a fork would copy this process's state.
_spawn = multiprocessing.get_context("spawn")


def run(options: dict[str, Any]) -> None:
    """Serve with uvicorn's `run` options and `worker_timeout` (seconds; see the module
    docstring): one process, or N workers under `Supervisor`."""
    options = dict(options)
    worker_timeout = float(options.pop("worker_timeout", 0) or 0)
    if (options.get("workers") or 1) > 1 and hasattr(socket, "SO_REUSEPORT"):
        sys.exit(Supervisor(options, worker_timeout=worker_timeout).run())
    uvicorn.run(APP, **options)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT: every worker binds one to the same address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Worker:
    process: SpawnProcess
    # Set by the worker once it listens and its app has started.
    ready: ProcessEvent
    # The `time.monotonic()` (one clock for every process) its event loop last ran at.
    heartbeat: c_double
    # When it was sent SIGABRT for not running.
    aborted_at: float | None = None


class Supervisor:
    def __init__(self, options: dict[str, Any], *, worker_timeout: float = 0) -> None:
        self.count: int = options["workers"]
        self.worker_timeout = worker_timeout
        self.options = {**options, "workers": None}
        # Applies the logging configuration to this process too.
        self.config = uvicorn.Config(APP, **self.options)
        self.workers: list[Worker] = []
        self.stopping = threading.Event()
        self.reload = False
        self.status = 0

    def run(self) -> int:
        """Serve until a signal stops it; the exit status (uvicorn's STARTUP_FAILURE when a
        worker could not start)."""
        try:
            # Kept bound (not listening, so it takes no connections) while the workers
            # come and go: the address stays ours, and port 0 becomes one port for all.
            reserved = bind(self.config.host, self.config.port)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", self.config.host, self.config.port, exc)
            return STARTUP_FAILURE
        with reserved:
            self.port = reserved.getsockname()[1]
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, self._on_signal)
            log.info(
                "supervisor [%d]: %d workers on http://%s:%d, each with its own socket",
                os.getpid(),
                self.count,
                self.config.host,
                self.port,
            )
            self.workers = [self._start() for _ in range(self.count)]
            while not self.stopping.wait(0.5):
                if self.reload:
                    self.reload = False
                    self._restart_all()
                self._abort_hung()
                self._replace_dead()
            self._stop_all()
        return self.status

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stopping.set()

    def _start(self) -> Worker:
        ready = _spawn.Event()
        heartbeat = _spawn.RawValue(c_double, 0.0)
        process = _spawn.Process(
            target=serve_worker,
            args=(self.options, self.port, ready, heartbeat),
            name="errorgraph-worker",
        )
        process.start()
        return Worker(process=process, ready=ready, heartbeat=heartbeat)

    def _abort_hung(self) -> None:
        """SIGABRT to the started workers whose event loop has not run for
        `worker_timeout` seconds, SIGKILL to those still alive `ABORT_SECONDS` after it;
        `_replace_dead` then starts others."""
        if not self.worker_timeout or self.stopping.is_set():
            return
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process.pid is None or not process.is_alive() or not worker.ready.is_set():
                continue
            if worker.aborted_at is None:
                silent = now - worker.heartbeat.value
                if silent > self.worker_timeout:
                    log.error(
                        "worker [%d] has not run its event loop for %.0f s: aborted, its "
                        "threads' stacks follow; starting another",
                        process.pid,
                        silent,
                    )
                    os.kill(process.pid, signal.SIGABRT)
                    worker.aborted_at = now
            elif now - worker.aborted_at > ABORT_SECONDS:
                log.error("worker [%d] did not exit on SIGABRT; killed", process.pid)
                process.kill()

    def _replace_dead(self) -> None:
        for index, worker in enumerate(self.workers):
            process = worker.process
            if process.is_alive() or self.stopping.is_set():
                continue
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # Its app, database or socket is broken: every new worker would fail alike.
                log.error("worker [%d] failed to start; stopping", process.pid)
                self.status = STARTUP_FAILURE
                self.stopping.set()
                return
            log.warning(
                "worker [%d] exited (status %s); starting another", process.pid, process.exitcode
            )
            self.workers[index] = self._start()

    def _restart_all(self) -> None:
        """One worker at a time, each replaced only once its successor serves: the address
        keeps answering throughout."""
        log.info("SIGHUP: restarting the workers one at a time")
        for index, old in enumerate(self.workers):
            new = self._start()
            deadline = time.monotonic() + STARTUP_SECONDS
            while not new.ready.wait(0.2):
                if (
                    self.stopping.is_set()
                    or not new.process.is_alive()
                    or time.monotonic() > deadline
                ):
                    if not self.stopping.is_set():
                        log.error(
                            "a new worker did not start (status %s); keeping the running ones",
                            new.process.exitcode,
                        )
                    self._stop([new])
                    return
            self._stop([old])
            self.workers[index] = new

    def _stop_all(self) -> None:
        self._stop(self.workers)

    def _stop(self, workers: list[Worker]) -> None:
        """SIGTERM: each worker answers its requests in flight and drains its writer."""
        for worker in workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGTERM)
        grace = (self.config.timeout_graceful_shutdown or 30) + 30
        for worker in workers:
            worker.process.join(grace)
            if worker.process.is_alive():
                log.error("worker [%d] did not stop within %d s; killed", worker.process.pid, grace)
                worker.process.kill()
                worker.process.join()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: ProcessEvent, heartbeat: c_double) -> None:
        super().__init__(config)
        self._ready = ready
        self._heartbeat = heartbeat
        self._beating: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._heartbeat.value = time.monotonic()
            self._beating = asyncio.create_task(self._beat(), name="errorgraph-heartbeat")
            self._ready.set()

    async def _beat(self) -> None:
        while True:
            self._heartbeat.value = time.monotonic()
            await asyncio.sleep(BEAT_SECONDS)


def serve_worker(
    options: dict[str, Any], port: int, ready: ProcessEvent, heartbeat: c_double
) -> None:
    """A worker's process: its own socket on the shared address, then uvicorn's server."""
    # SIGABRT from the supervisor (a hung event loop) writes every thread's stack.
    faulthandler.enable()
    config = uvicorn.Config(APP, **{**options, "port": port})
    try:
        sock = bind(config.host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, port, exc)
        sys.exit(STARTUP_FAILURE)
    _Server(config, ready, heartbeat).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    """`python -m app.supervisor '<uvicorn.run options as JSON>'`."""
    run(orjson.loads((argv if argv is not None else sys.argv[1:])[0]))


if __name__ == "__main__":
    main()
