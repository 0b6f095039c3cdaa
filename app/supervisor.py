"""The supervisor of `errorgraph serve --workers N`, in a process of its own.

`serve` sets up in the CLI's process (migrations, the demo project), which imports the
whole app; kept as the supervisor, that process held ~90 MiB for the server's lifetime,
though a supervisor only starts, watches and stops the workers. With more than one worker
`serve` replaces itself (exec) with this module, which imports neither the app nor
uvicorn nor structlog (with the console renderer's imports, rich and pygments, those two
were most of its ~39 MiB): each worker (`app.worker`) imports them for itself. Workers
are plain child processes, not `multiprocessing`'s, whose resource tracker was one more
Python process (~13 MiB) for nothing to track.

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

import ctypes
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import orjson

APP = "app.main:app"
# uvicorn's exit status for a server that cannot start (`uvicorn.config.STARTUP_FAILURE`),
# written out so that this process need not import uvicorn.
STARTUP_FAILURE = 3
# How long a worker started by SIGHUP may take to serve before the restart is given up.
STARTUP_SECONDS = 120
# How often a worker's event loop shows it runs, and how long a worker sent SIGABRT for
# not running has to write its stacks and exit before it is killed.
BEAT_SECONDS = 1.0
ABORT_SECONDS = 5.0

log = logging.getLogger("app.supervisor")  # also when run as __main__


def run(options: dict[str, Any]) -> None:
    """Serve with uvicorn's `run` options, `worker_timeout` (seconds; see the module
    docstring) and `log_format` (for the supervisor's own lines): one process, or N
    workers under `Supervisor`."""
    options = dict(options)
    worker_timeout = float(options.pop("worker_timeout", 0) or 0)
    log_format = options.pop("log_format", "auto")
    if (options.get("workers") or 1) > 1 and hasattr(socket, "SO_REUSEPORT"):
        supervisor = Supervisor(options, worker_timeout=worker_timeout, log_format=log_format)
        sys.exit(supervisor.run())
    import uvicorn  # here alone: a supervisor never needs it

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


class LineFormatter(logging.Formatter):
    """The supervisor's few lines in the shape of the workers' (app/logging.py renders
    theirs with structlog): a JSON object with the same keys, or a line for a person."""

    def __init__(self, *, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        timestamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        level = record.levelname.lower()
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if self.as_json:
            line = {"event": message, "timestamp": timestamp, "level": level, "logger": record.name}
            return orjson.dumps(line).decode()
        return f"{timestamp} [{level:<9}] {message} [{record.name}]"


def logs_json(log_format: str) -> bool:
    """Whether this process logs JSON lines: asked for, or stderr is not a terminal (as
    `app.logging.wants_json` decides, without importing structlog)."""
    return log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())


def configure_logging(*, level: str, log_format: str) -> None:
    """This process's logging, to stderr: JSON lines unless stderr is a terminal."""
    as_json = logs_json(log_format)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(as_json=as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    # Shared with the worker: the `time.monotonic()` (one clock for every process) its
    # event loop last ran at; 0 until it listens and its app has started.
    heartbeat: ctypes.c_double
    # When it was sent SIGABRT for not running.
    aborted_at: float | None = None

    @property
    def ready(self) -> bool:
        return self.heartbeat.value > 0

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class Supervisor:
    def __init__(
        self, options: dict[str, Any], *, worker_timeout: float = 0, log_format: str = "auto"
    ) -> None:
        self.count: int = options["workers"]
        self.worker_timeout = worker_timeout
        self.options = {**options, "workers": None}
        self.host: str = options.get("host") or "127.0.0.1"
        self.requested_port: int = options.get("port", 8000)
        # uvicorn's own default, which the workers apply.
        self.graceful_seconds: float = options.get("timeout_graceful_shutdown") or 30
        configure_logging(level=options.get("log_level") or "info", log_format=log_format)
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
            reserved = bind(self.host, self.requested_port)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", self.host, self.requested_port, exc)
            return STARTUP_FAILURE
        with reserved:
            self.port = reserved.getsockname()[1]
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, self._on_signal)
            log.info(
                "supervisor [%d]: %d workers on http://%s:%d, each with its own socket",
                os.getpid(),
                self.count,
                self.host,
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
        size = ctypes.sizeof(ctypes.c_double)
        # An unlinked file, zeroed: the worker maps the same page.
        with tempfile.TemporaryFile() as shared:
            shared.truncate(size)
            memory = mmap.mmap(shared.fileno(), size)
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "app.worker",
                    orjson.dumps(self.options).decode(),
                    str(self.port),
                    str(shared.fileno()),
                ],
                pass_fds=(shared.fileno(),),
            )
        return Worker(process=process, heartbeat=ctypes.c_double.from_buffer(memory))

    def _abort_hung(self) -> None:
        """SIGABRT to the started workers whose event loop has not run for
        `worker_timeout` seconds, SIGKILL to those still alive `ABORT_SECONDS` after it;
        `_replace_dead` then starts others."""
        if not self.worker_timeout or self.stopping.is_set():
            return
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if not worker.alive or not worker.ready:
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
                    process.send_signal(signal.SIGABRT)
                    worker.aborted_at = now
            elif now - worker.aborted_at > ABORT_SECONDS:
                log.error("worker [%d] did not exit on SIGABRT; killed", process.pid)
                process.kill()

    def _replace_dead(self) -> None:
        for index, worker in enumerate(self.workers):
            process = worker.process
            if worker.alive or self.stopping.is_set():
                continue
            if process.returncode == STARTUP_FAILURE:
                # Its app, database or socket is broken: every new worker would fail alike.
                log.error("worker [%d] failed to start; stopping", process.pid)
                self.status = STARTUP_FAILURE
                self.stopping.set()
                return
            log.warning(
                "worker [%d] exited (status %s); starting another", process.pid, process.returncode
            )
            self.workers[index] = self._start()

    def _restart_all(self) -> None:
        """One worker at a time, each replaced only once its successor serves: the address
        keeps answering throughout."""
        log.info("SIGHUP: restarting the workers one at a time")
        for index, old in enumerate(self.workers):
            new = self._start()
            deadline = time.monotonic() + STARTUP_SECONDS
            while not new.ready:
                if self.stopping.wait(0.2) or not new.alive or time.monotonic() > deadline:
                    if not self.stopping.is_set():
                        log.error(
                            "a new worker did not start (status %s); keeping the running ones",
                            new.process.returncode,
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
            if worker.alive:
                worker.process.terminate()
        grace = self.graceful_seconds + 30
        for worker in workers:
            try:
                worker.process.wait(grace)
            except subprocess.TimeoutExpired:
                log.error("worker [%d] did not stop within %d s; killed", worker.process.pid, grace)
                worker.process.kill()
                worker.process.wait()


def main(argv: list[str] | None = None) -> None:
    """`python -m app.supervisor '<uvicorn.run options as JSON>'`."""
    run(orjson.loads((argv if argv is not None else sys.argv[1:])[0]))


if __name__ == "__main__":
    main()
