"""The `errorgraph` command, run as a user runs it: a real process, real settings."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from support import ERRORGRAPH, cli_env, rss_mib

from app.config import Settings


def run(settings: Settings, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ERRORGRAPH, *args],
        env=cli_env(settings, **env),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_project_create_json_and_list(settings: Settings, tmp_path: Path):
    created = run(
        settings,
        "project",
        "create",
        "My Shop",
        "--json",
        cwd=tmp_path,
        ERRORGRAPH_PUBLIC_URL="https://errors.example.com",
    )
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert set(info) >= {"id", "slug", "ingest_key", "api_key", "dsn", "token"}
    assert info["slug"] == "my-shop"
    assert info["ingest_key"].startswith("pk_")
    assert info["dsn"] == f"https://{info['ingest_key']}@errors.example.com/{info['id']}"

    again = run(settings, "project", "create", "My Shop", "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["slug"] == "my-shop-2"
    assert json.loads(again.stdout)["dsn"].endswith(f"@127.0.0.1:8000/{info['id'] + 1}")

    listed = run(settings, "project", "list", "--json", cwd=tmp_path)
    assert [p["slug"] for p in json.loads(listed.stdout)] == ["my-shop", "my-shop-2"]


def test_project_create_human_output(settings: Settings, tmp_path: Path):
    created = run(settings, "project", "create", "Demo", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert "Sentry DSN:" in created.stdout
    assert "Admin API token:" in created.stdout
    assert "egt_" in created.stdout


def test_keys_and_tokens(settings: Settings, tmp_path: Path):
    run(settings, "project", "create", "Keys", cwd=tmp_path)
    made = run(
        settings, "key", "create", "--project", "keys", "--scope", "read", "--json", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["scopes"] == ["read"] and key["key"].startswith("sk_")

    listed = json.loads(run(settings, "key", "list", "-p", "keys", "--json", cwd=tmp_path).stdout)
    assert len(listed) == 3
    assert all(key["key"] not in json.dumps(row) for row in listed)

    revoked = run(settings, "key", "revoke", str(key["id"]), cwd=tmp_path)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    listed = json.loads(run(settings, "key", "list", "-p", "keys", "--json", cwd=tmp_path).stdout)
    assert [row["revoked_at"] is not None for row in listed] == [False, False, True]

    token = run(settings, "token", "create", "--scope", "admin", "--json", cwd=tmp_path)
    made_token = json.loads(token.stdout)
    assert made_token["scopes"] == ["admin"]
    assert made_token["projects"] is None

    tokens = json.loads(run(settings, "token", "list", "--json", cwd=tmp_path).stdout)
    assert [(row["id"], row["revoked_at"]) for row in tokens][-1] == (made_token["id"], None)
    assert all(made_token["token"] not in json.dumps(row) for row in tokens)
    assert made_token["token"].startswith(tokens[-1]["prefix"])
    revoked = run(settings, "token", "revoke", str(made_token["id"]), cwd=tmp_path)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    tokens = json.loads(run(settings, "token", "list", "--json", cwd=tmp_path).stdout)
    assert [row["revoked_at"] is not None for row in tokens] == [False, True]
    human = run(settings, "token", "list", cwd=tmp_path).stdout
    assert "revoked" in human and "all projects" in human
    missing = run(settings, "token", "revoke", "999", cwd=tmp_path)
    assert missing.returncode == 1 and "no token 999" in missing.stderr


def test_errors_are_one_line(settings: Settings, tmp_path: Path):
    bad_scope = run(settings, "token", "create", "--scope", "root", cwd=tmp_path)
    assert bad_scope.returncode == 1
    assert bad_scope.stderr.strip().count("\n") == 0
    assert "unknown scope 'root'" in bad_scope.stderr
    assert "Traceback" not in bad_scope.stderr

    missing = run(settings, "key", "list", "--project", "nope", cwd=tmp_path)
    assert missing.returncode == 1 and "no project 'nope'" in missing.stderr

    bad_setting = run(settings, "project", "list", cwd=tmp_path, ERRORGRAPH_PORT="eighty")
    assert bad_setting.returncode == 1
    assert "ERRORGRAPH_PORT" in bad_setting.stderr
    assert "Traceback" not in bad_setting.stderr

    bad_db = run(settings, "project", "list", cwd=tmp_path, ERRORGRAPH_DATABASE_URL="mysql://x")
    assert bad_db.returncode == 1 and "ERRORGRAPH_DATABASE_URL" in bad_db.stderr

    unreachable = run(
        settings,
        "project",
        "list",
        cwd=tmp_path,
        ERRORGRAPH_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
    )
    assert unreachable.returncode == 1
    assert "cannot open the database" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_serve_refuses_memory_pubsub_with_workers(settings: Settings, tmp_path: Path):
    refused = run(settings, "serve", "--workers", "2", cwd=tmp_path)
    assert refused.returncode == 1
    assert "ERRORGRAPH_BROADCAST_URL" in refused.stderr


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _workers(supervisor: int) -> list[int]:
    return [
        child
        for child in _children(supervisor)
        if Path(f"/proc/{child}/cmdline").read_text().split("\0")[1:3] == ["-m", "app.worker"]
    ]


def _sockets(pid: int, port: int, state: str) -> list[str]:
    """The inodes of `pid`'s TCP sockets on local `port` in `state` (from /proc: "01"
    established, "0A" listening)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == state and fields[9] in inodes:
            found.append(fields[9])
    return found


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_with_workers_supervises_them_from_a_lean_process(settings: Settings, tmp_path: Path):
    """`serve --workers 2` on one SQLite file and Redis: the CLI process that set up (the
    whole app imported) becomes a supervisor holding uvicorn alone; each worker listens on
    a socket of its own, so that clients' connections are spread over both; a worker that
    dies is replaced, SIGHUP replaces both while the address keeps answering, and SIGTERM
    stops them all, exit status 0."""
    from support import RedisServer, free_port

    redis = RedisServer(tmp_path)
    redis.start()
    port = free_port()
    key = json.loads(run(settings, "project", "create", "w", "--json", cwd=tmp_path).stdout)[
        "ingest_key"
    ]
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [ERRORGRAPH, "serve", "--workers", "2"],
            env=cli_env(settings, ERRORGRAPH_PORT=str(port), ERRORGRAPH_BROADCAST_URL=redis.url),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    workers: list[int] = []

    def started(count: int) -> None:
        deadline = time.monotonic() + 60
        while log.read_text().count("Application startup complete") < count or not _answers(port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    def submit(n: int) -> None:
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/errors",
            json={
                "api_key": key,
                "event_id": f"w-{n}",
                "timestamp": "2026-12-05T09:00:00Z",
                "type": "message",
                "message": "m",
            },
        )
        assert response.status_code == 202, response.text

    try:
        started(2)
        workers = _workers(process.pid)
        assert len(workers) == 2
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_text().split("\0")
        assert cmdline[1:3] == ["-m", "app.supervisor"]
        # Neither the app nor uvicorn nor structlog (~17 MiB); the set-up's process held
        # ~100, and with uvicorn and structlog it held ~39.
        assert rss_mib(process.pid) < 25
        assert all(rss_mib(worker) > 80 for worker in workers)  # they hold the app
        # Its only children are the workers (no resource tracker of multiprocessing's).
        assert sorted(_children(process.pid)) == sorted(workers)

        # Each listens on a socket of its own (uvicorn's supervisor shares one).
        listening = [_sockets(worker, port, "0A") for worker in workers]
        assert all(len(inodes) == 1 for inodes in listening), listening
        assert listening[0] != listening[1]
        # 32 keep-alive connections: the kernel spreads them over the workers' sockets
        # (through one shared socket, one worker often took nearly all of them).
        clients = [httpx.Client() for _ in range(32)]
        try:
            for client in clients:
                assert client.get(f"http://127.0.0.1:{port}/health/live").status_code == 200
            held = [len(_sockets(worker, port, "01")) for worker in workers]
            assert sum(held) == 32 and min(held) >= 4, held
        finally:
            for client in clients:
                client.close()
        for n in range(20):
            submit(n)

        os.kill(workers[0], signal.SIGKILL)  # a worker dies: another takes its place
        started(3)
        replaced = _workers(process.pid)
        assert len(replaced) == 2 and workers[0] not in replaced and workers[1] in replaced
        submit(20)

        process.send_signal(signal.SIGHUP)  # both replaced, one at a time
        started(5)
        deadline = time.monotonic() + 30
        while set(_workers(process.pid)) & set(replaced) or len(_workers(process.pid)) != 2:
            assert time.monotonic() < deadline, _workers(process.pid)
            time.sleep(0.2)
        workers = [*replaced, *_workers(process.pid)]
        submit(21)

        process.terminate()
        assert process.wait(timeout=30) == 0
        for worker in workers:
            assert (
                not Path(f"/proc/{worker}").exists()
                or "zombie" in Path(f"/proc/{worker}/status").read_text()
            )
    finally:
        if process.poll() is None:
            for worker in workers:
                subprocess.run(["kill", "-9", str(worker)], check=False)
            process.kill()
            process.wait()
        redis.stop()


# Loaded by every Python process of the test below (through PYTHONPATH): in the first
# worker to get there, a thread holds the interpreter lock without end once the worker
# serves, as a C call that never returns does. A regular expression that backtracks
# without end never releases the lock; only a signal's C handler still runs.
HANG_ONE_WORKER = """
import os, re, sys, threading, time

def _hang():
    while not ("app.main" in sys.modules and sys.argv[0].endswith("worker.py")):
        time.sleep(0.1)
    time.sleep(3)
    try:
        os.close(os.open(os.environ["HANG_MARKER"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    re.match(r"(a+)+$", "a" * 64 + "b")

threading.Thread(target=_hang, daemon=True).start()
"""


def test_serve_with_workers_replaces_a_hung_worker(settings: Settings, tmp_path: Path):
    """A worker that lives but whose event loop no longer runs is aborted, its threads'
    stacks written to the log, and another takes its place; one that does not even die
    of SIGABRT (stopped) is killed. Neither ever answers again, so neither would be
    noticed by waiting for it to exit."""
    from support import RedisServer, free_port

    redis = RedisServer(tmp_path)
    redis.start()
    port = free_port()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HANG_ONE_WORKER)
    env = cli_env(
        settings,
        ERRORGRAPH_PORT=str(port),
        ERRORGRAPH_BROADCAST_URL=redis.url,
        ERRORGRAPH_WORKER_TIMEOUT="3",
        HANG_MARKER=str(tmp_path / "hung"),
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [ERRORGRAPH, "serve", "--workers", "2"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    workers: list[int] = []

    def wait_for(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    def started(count: int) -> bool:
        return log.read_text().count("Application startup complete") >= count

    try:
        wait_for(lambda: started(2) and (tmp_path / "hung").exists())
        workers = _workers(process.pid)
        assert len(workers) == 2
        # One worker now holds the interpreter lock for good: it is aborted and replaced.
        wait_for(lambda: started(3) and len(set(workers) & set(_workers(process.pid))) == 1)
        text = log.read_text()
        assert "has not run its event loop for" in text
        assert "Fatal Python error: Aborted" in text
        assert 'sitecustomize.py", line' in text and "in _hang" in text  # the culprit
        assert "exited (status -6); starting another" in text
        for _ in range(10):  # the address keeps answering, whichever worker takes it
            assert _answers(port)

        # A stopped worker does not die of SIGABRT either: it is killed.
        workers = _workers(process.pid)
        os.kill(workers[0], signal.SIGSTOP)
        wait_for(lambda: started(4) and workers[0] not in _workers(process.pid))
        text = log.read_text()
        assert f"worker [{workers[0]}] did not exit on SIGABRT; killed" in text
        assert "exited (status -9); starting another" in text
        assert _answers(port)

        process.terminate()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            for worker in workers:
                subprocess.run(["kill", "-9", str(worker)], check=False)
            process.kill()
            process.wait()
        redis.stop()


def test_serve_with_workers_stops_when_the_address_is_taken(settings: Settings, tmp_path: Path):
    """A port another program listens on: the supervisor says so and exits with uvicorn's
    start-up failure status, instead of starting workers that would fail in turn."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        refused = run(
            settings,
            "serve",
            "--workers",
            "2",
            cwd=tmp_path,
            ERRORGRAPH_PORT=str(port),
            # Never reached: no worker starts.
            ERRORGRAPH_BROADCAST_URL="redis://127.0.0.1:1/0",
        )
    finally:
        taken.close()
    assert refused.returncode == 3, refused.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in refused.stderr
    assert "startup complete" not in refused.stderr


def test_a_worker_whose_app_cannot_start_exits_with_the_start_up_failure_status(
    settings: Settings, tmp_path: Path
):
    """A worker (`python -m app.worker`, as the supervisor starts it) whose app fails to
    start exits with uvicorn's start-up failure status, on which the supervisor stops:
    with any other status it would start one failing worker after another."""
    import sys

    import uvicorn.config
    from support import free_port

    from app import supervisor

    assert supervisor.STARTUP_FAILURE == uvicorn.config.STARTUP_FAILURE
    (tmp_path / "not-a-directory").write_text("")
    unusable = f"sqlite+aiosqlite:///{tmp_path / 'not-a-directory' / 'errorgraph.db'}"
    options = {"host": "127.0.0.1", "log_level": "info", "access_log": False}
    with (tmp_path / "heartbeat").open("w+b") as shared:
        shared.truncate(8)
        worker = subprocess.run(
            [
                sys.executable,
                "-m",
                "app.worker",
                json.dumps(options),
                str(free_port()),
                str(shared.fileno()),
            ],
            env=cli_env(settings, ERRORGRAPH_DATABASE_URL=unusable),
            pass_fds=(shared.fileno(),),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shared.read() == bytes(8)  # it never served
    assert worker.returncode == supervisor.STARTUP_FAILURE, worker.stderr
    assert "Application startup failed" in worker.stderr


def test_default_database_lives_under_data(tmp_path: Path):
    env = {
        k: v
        for k, v in cli_env(Settings(_env_file=None)).items()  # type: ignore[call-arg]
        if k != "ERRORGRAPH_DATABASE_URL"
    }
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "x", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "data" / "errorgraph.db").exists()


def test_serve_demo_prints_a_working_dsn(live_server, tmp_path: Path):
    # The live server was started by `errorgraph serve`; a CLI-created project is seen by it.
    created = subprocess.run(
        [ERRORGRAPH, "project", "create", "Seen", "--json"],
        env=live_server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    key = json.loads(created.stdout)["ingest_key"]
    response = httpx.post(
        live_server.base_url + "/api/v1/errors",
        json={
            "api_key": key,
            "event_id": "cli-1",
            "timestamp": "2025-01-15T10:30:00Z",
            "type": "message",
            "message": "hello from the CLI test",
        },
    )
    assert response.status_code == 202


def test_serve_demo_prints_dsn_and_keys_that_work(settings: Settings, tmp_path: Path):
    """The README's first command ends in `errorgraph serve --demo`: what it prints works."""
    import re
    import time

    from support import free_port

    port = free_port()
    outputs = []
    for _ in range(2):  # a second start reuses the project and prints fresh secrets
        process = subprocess.Popen(
            [ERRORGRAPH, "serve", "--demo"],
            env=cli_env(settings, ERRORGRAPH_PORT=str(port)),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            lines = []
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if "listening on" in line:
                    break
            output = "".join(lines)
            dsn = re.search(r"Sentry DSN:\s+(\S+)", output)
            key = re.search(r"Ingest key.*:\s+(pk_\w+)", output)
            assert dsn and key, output
            assert dsn.group(1) == f"http://{key.group(1)}@127.0.0.1:{port}/1"
            deadline = time.monotonic() + 30
            while True:
                try:
                    response = httpx.post(
                        f"http://127.0.0.1:{port}/api/v1/errors",
                        json={
                            "api_key": key.group(1),
                            "event_id": f"demo-{len(outputs)}",
                            "timestamp": "2025-01-15T10:30:00Z",
                            "type": "message",
                            "message": "hello",
                        },
                    )
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "server did not start"
                    time.sleep(0.1)
            assert response.status_code == 202
            outputs.append(key.group(1))
        finally:
            process.terminate()
            process.wait(timeout=15)
            if process.stdout:
                process.stdout.close()
    assert outputs[0] != outputs[1]
