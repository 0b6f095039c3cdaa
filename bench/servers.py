"""The servers a benchmark runs against, each started fresh on a free loopback port.

- `errorgraph_server`: `errorgraph serve` (one process, or `--workers N`) on a new SQLite
  file or a new PostgreSQL database, with a project created through the CLI;
- `hello_server`: `bench/hello.py` under the same uvicorn;
- `bugsink_server`: Bugsink from its own virtualenv (`bench/.venv-bugsink`) in its
  single-server shape — SQLite for data and for its task queue, gunicorn for HTTP and
  `bugsink-runsnappea` digesting in the background.

`RssSampler` follows the resident memory of a server's whole process tree (workers,
snappea) and keeps the peak of the sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent
ERRORGRAPH = str(BIN / "errorgraph")
BUGSINK_VENV = BENCH / ".venv-bugsink"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


TICKS = os.sysconf("SC_CLK_TCK")


def _tree(roots: list[int]) -> list[int]:
    tree = _children()
    found, stack = [], list(roots)
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


def _sum_mib(pids: list[int], file: str, field: str) -> float:
    """The sum over `pids` of the kB figure `field` (e.g. `VmRSS:`) of `/proc/PID/file`."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
                    break
    return total / 1024


def tree_rss_mib(roots: list[int]) -> float:
    """Resident memory of `roots` and all their descendants, in MiB."""
    return _sum_mib(_tree(roots), "status", "VmRSS:")


def tree_pss_mib(roots: list[int]) -> float:
    """Proportional set size of `roots` and their descendants, in MiB: each page counted
    once over the processes that share it (the interpreter's and the libraries' files,
    for a server's workers), where the sum of their RSS counts it in each."""
    return _sum_mib(_tree(roots), "smaps_rollup", "Pss:")


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    used = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            used[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    return used


def tree_cpu_seconds(roots: list[int]) -> dict[int, float]:
    """CPU time (user + system) each process of the trees under `roots` has used."""
    return _cpu_seconds(_tree(roots))


class RssSampler:
    """Samples the process trees under `roots` every 50 ms; `peak` is the largest sum of
    resident memory, `peak_pss` of proportional set sizes, `cpu_seconds` the CPU time
    the trees used while sampled (on a busy machine the server's CPU per event is
    steadier than its rate)."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.peak = 0.0
        self.peak_pss = 0.0
        self.cpu_seconds = 0.0
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pids = _tree(self.roots)  # once a sample: it reads every process's stat
        self.peak = max(self.peak, _sum_mib(pids, "status", "VmRSS:"))
        self.peak_pss = max(self.peak_pss, _sum_mib(pids, "smaps_rollup", "Pss:"))
        self._last.update(_cpu_seconds(pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._start = tree_cpu_seconds(self.roots)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.cpu_seconds = sum(used - self._start.get(pid, 0.0) for pid, used in self._last.items())


@dataclass
class Server:
    base_url: str
    pids: list[int]
    project_id: int | str
    key: str
    token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _wait_http(url: str, processes: list[subprocess.Popen[bytes]], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise SystemExit(f"server did not start; {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fresh_postgres_database(url: str) -> str:
    """A new, empty database on the server of `url`; its URL."""
    import asyncpg

    name = "errorgraph_bench_" + uuid.uuid4().hex[:8]

    async def create() -> None:
        conn = await asyncpg.connect(url)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    return url.rpartition("/")[0] + "/" + name


def drop_postgres_database(url: str) -> None:
    import asyncpg

    admin, _, name = url.rpartition("/")

    async def drop() -> None:
        conn = await asyncpg.connect(admin + "/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    asyncio.run(drop())


def errorgraph_env(
    workdir: Path, *, database_url: str | None = None, broadcast_url: str = "memory://"
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRORGRAPH_")}
    env["ERRORGRAPH_DATABASE_URL"] = database_url or f"sqlite+aiosqlite:///{workdir}/bench.db"
    env["ERRORGRAPH_BROADCAST_URL"] = broadcast_url
    env["ERRORGRAPH_LOG_LEVEL"] = "warning"
    return env


def create_project(env: dict[str, str], workdir: Path, name: str = "bench") -> dict[str, Any]:
    out = subprocess.run(
        [ERRORGRAPH, "project", "create", name, "--json"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


@contextlib.contextmanager
def errorgraph_server(
    workdir: Path,
    *,
    database_url: str | None = None,
    broadcast_url: str = "memory://",
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    project: dict[str, Any] | None = None,
) -> Iterator[Server]:
    """`errorgraph serve` on a fresh port; a new project unless `project` is given."""
    env = errorgraph_env(workdir, database_url=database_url, broadcast_url=broadcast_url)
    env.update(extra_env or {})
    if project is None:
        project = create_project(env, workdir)
    port = free_port()
    env["ERRORGRAPH_PORT"] = str(port)
    log = workdir / f"errorgraph-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ERRORGRAPH, "serve", "--workers", str(workers)],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=out,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_http(base + "/health/live", [process], log)
            yield Server(
                base_url=base,
                pids=[process.pid],
                project_id=project["id"],
                key=project["ingest_key"],
                token=project["token"],
                extra={"env": env, "log": log},
            )
        finally:
            _stop(process)


@contextlib.contextmanager
def hello_server(workdir: Path) -> Iterator[Server]:
    port = free_port()
    log = workdir / f"hello-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "uvicorn"),
                "bench.hello:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_http(base + "/", [process], log)
            yield Server(base_url=base, pids=[process.pid], project_id=1, key="0" * 32)
        finally:
            _stop(process)


BUGSINK_PROJECT = textwrap.dedent(
    """
    from projects.models import Project
    from teams.models import Team
    team = Team.objects.create(name="bench")
    project = Project.objects.create(name="bench", team=team)
    print(project.id, project.sentry_key.hex)
    """
)


def bugsink_bin(name: str) -> str:
    path = BUGSINK_VENV / "bin" / name
    if not path.exists():
        raise SystemExit(
            f"{path} is missing: python3 -m venv {BUGSINK_VENV} && "
            f"{BUGSINK_VENV}/bin/pip install bugsink gunicorn"
        )
    return str(path)


@contextlib.contextmanager
def bugsink_server(workdir: Path, *, workers: int = 2) -> Iterator[Server]:
    """Bugsink's single-server setup: its `singleserver` configuration template (SQLite
    for events and for the snappea task queue), `bugsink-manage migrate` for both
    databases, gunicorn with sync workers for HTTP and `bugsink-runsnappea` for the
    background digest. Plain HTTP on loopback, so the template's proxy and secure-cookie
    settings are turned off. Events are visible once digested: counted in its database."""
    home = workdir / "bugsink"
    home.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRORGRAPH_")}
    env.update(
        DJANGO_SETTINGS_MODULE="bugsink_conf",
        PYTHONPATH=str(home),
        PYTHONUNBUFFERED="1",
    )
    subprocess.run(
        [
            bugsink_bin("bugsink-create-conf"),
            "--template=singleserver",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--base-dir={home}",
            f"--output-file={home / 'bugsink_conf.py'}",
        ],
        env=env,
        cwd=home,
        check=True,
        capture_output=True,
    )
    conf = home / "bugsink_conf.py"
    conf.write_text(
        conf.read_text().replace('"https://', '"http://')
        + "\nSESSION_COOKIE_SECURE = False\nCSRF_COOKIE_SECURE = False\n"
        "SECURE_PROXY_SSL_HEADER = None\nUSE_X_REAL_IP = False\n"
    )
    manage = bugsink_bin("bugsink-manage")
    for args in (["migrate"], ["migrate", "snappea", "--database=snappea"]):
        subprocess.run([manage, *args], env=env, cwd=home, check=True, capture_output=True)
    out = subprocess.run(
        [manage, "shell", "-c", BUGSINK_PROJECT],
        env=env,
        cwd=home,
        check=True,
        capture_output=True,
        text=True,
    )
    project_id, key = out.stdout.split()[-2:]
    log = home / "bugsink.log"
    with log.open("wb") as sink:
        web = subprocess.Popen(
            [
                bugsink_bin("gunicorn"),
                f"--bind=127.0.0.1:{port}",
                f"--workers={workers}",
                "--timeout=6",
                "--max-requests=1000",
                "--max-requests-jitter=100",
                "bugsink.wsgi",
            ],
            env=env,
            cwd=home,
            stdout=sink,
            stderr=sink,
        )
        snappea = subprocess.Popen(
            [bugsink_bin("bugsink-runsnappea")], env=env, cwd=home, stdout=sink, stderr=sink
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_http(base + "/health/ready", [web, snappea], log)
            yield Server(
                base_url=base,
                pids=[web.pid, snappea.pid],
                project_id=int(project_id),
                key=key,
                extra={"db": home / "db.sqlite3", "log": log},
            )
        finally:
            _stop(web)
            _stop(snappea)


def bugsink_event_count(db: Path) -> Any:
    """Bugsink's read side: digested events, counted in its SQLite file (read-only)."""
    import sqlite3

    async def count() -> int:
        with contextlib.closing(
            sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        ) as conn:
            return int(conn.execute("SELECT count(*) FROM events_event").fetchone()[0])

    return count
