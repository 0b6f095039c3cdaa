"""`errorgraph purge` and `errorgraph export`, run as a user runs them: a real process on a
database whose events were received long ago (written through the ingest path with a
clock set back)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import os
import pty
import subprocess
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select
from support import ERRORGRAPH, T0, cli_env, make_event

from app.config import Settings
from app.models import Event, RetentionRun, utcnow
from app.services.ingest import ingest_events
from app.services.keys import create_project
from app.services.retention import set_retention
from app.services.runtime import Runtime

LONG_AGO = utcnow() - timedelta(days=200)


def run(settings: Settings, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ERRORGRAPH, *args],
        env=cli_env(settings, **env),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture
async def stored(settings: Settings) -> Settings:
    """Project `old`: 3 events (2 issues) received 200 days ago; project `fresh`: 2 events
    received now. Event times (the clients' clocks) are T0 and an hour later."""
    runtime = await Runtime.start(settings, clock=lambda: LONG_AGO)
    try:
        old = await create_project(sessions=runtime.database.sessions, name="old")
        await ingest_events(
            writer=runtime.writer,
            project=old.project,
            events=[make_event(1), make_event(1, at=T0 + timedelta(hours=1)), make_event(2)],
        )
    finally:
        await runtime.stop()
    runtime = await Runtime.start(settings)
    try:
        fresh = await create_project(sessions=runtime.database.sessions, name="fresh")
        await ingest_events(
            writer=runtime.writer,
            project=fresh.project,
            events=[make_event(3), make_event(3, at=T0 + timedelta(hours=1))],
        )
    finally:
        await runtime.stop()
    return settings


async def event_count(settings: Settings) -> int:
    runtime = await Runtime.start(settings)
    try:
        async with runtime.database.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(Event)) or 0)
    finally:
        await runtime.stop()


async def test_purge_dry_run_counts_without_deleting(stored: Settings, tmp_path: Path):
    result = run(stored, "purge", "--dry-run", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = {r["project"]: r for r in json.loads(result.stdout)}
    assert {
        k: (r["status"], r["events_deleted"], r["groups_deleted"]) for k, r in runs.items()
    } == {
        "old": ("planned", 3, 2),
        "fresh": ("planned", 0, 0),
    }
    human = run(stored, "purge", "--dry-run", "--project", "old", cwd=tmp_path)
    assert human.stdout.strip() == "old: would delete 3 events and 2 groups"
    assert await event_count(stored) == 5


async def test_purge_deletes_and_records_the_run(stored: Settings, tmp_path: Path):
    result = run(stored, "purge", "--project", "old", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "old: deleted 3 events and 2 groups"
    assert await event_count(stored) == 2

    runtime = await Runtime.start(stored)
    try:
        async with runtime.database.sessions() as session:
            runs = list(await session.scalars(select(RetentionRun)))
    finally:
        await runtime.stop()
    assert [(r.status, r.events_deleted, r.groups_deleted) for r in runs] == [("ok", 3, 2)]


async def test_purge_exports_first_and_fails_cleanly(stored: Settings, tmp_path: Path):
    runtime = await Runtime.start(stored)
    try:
        blocker = tmp_path / "in-the-way"
        blocker.write_text("")
        for destination in [blocker, tmp_path / "archive"]:
            await set_retention(
                sessions=runtime.database.sessions,
                project_id=None,
                days=90,
                auto_export_before_cleanup=True,
                export_destination=destination.as_uri(),
            )
            if destination == blocker:
                failed = run(stored, "purge", cwd=tmp_path)
    finally:
        await runtime.stop()
    # With the destination a file, nothing was deleted and the exit status says so.
    assert failed.returncode == 1
    assert "old: failed after deleting 0 events and 0 groups: cannot write to" in failed.stdout

    result = run(stored, "purge", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [old] = [r for r in json.loads(result.stdout) if r["project"] == "old"]
    assert (old["status"], old["events_deleted"]) == ("ok", 3)
    [archive] = (tmp_path / "archive").iterdir()
    assert old["exported_to"] == archive.as_uri()
    with gzip.open(archive) as lines:
        assert len([orjson.loads(line) for line in lines]) == 3
    assert await event_count(stored) == 2


async def test_export_json_and_csv(stored: Settings, tmp_path: Path):
    as_json = tmp_path / "out" / "events.json"
    as_json.parent.mkdir()
    result = run(
        stored, "export", "--format", "json", "--project", "old", "--output", str(as_json),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Wrote 3 events to {as_json}"
    rows = json.loads(as_json.read_text())
    assert [r["exception_type"] for r in rows] == ["Error1", "Error1", "Error2"]
    assert {r["received_at"][:10] for r in rows} == {LONG_AGO.date().isoformat()}

    as_csv = tmp_path / "out" / "events.csv"
    since = (T0 + timedelta(minutes=30)).isoformat()
    result = run(
        stored, "export", "--format", "csv", "--since", since, "--output", str(as_csv),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(as_csv.read_text())))
    assert [(r["exception_type"], r["timestamp"]) for r in table] == [
        ("Error1", (T0 + timedelta(hours=1)).isoformat()),
        ("Error3", (T0 + timedelta(hours=1)).isoformat()),
    ]
    assert sorted(p.name for p in as_csv.parent.iterdir()) == ["events.csv", "events.json"]

    bad = run(stored, "export", "--format", "csv", "--since", "yesterday", "-o", "x", cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.startswith("errorgraph: error: --since: not an ISO 8601 time")
    missing = run(
        stored, "export", "--format", "csv", "--output", str(tmp_path / "no" / "x.csv"),
        cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.startswith("errorgraph: error: No such file or directory")


def on_a_terminal(settings: Settings, args: list[str], cwd: Path) -> str:
    """Run the command with a pseudo-terminal as stdout; what the terminal received."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [ERRORGRAPH, *args],
        env=cli_env(settings, TERM="xterm", COLUMNS="100"),
        stdout=secondary,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
    )
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal's other end closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    assert process.wait(timeout=60) == 0
    return seen.decode(errors="replace")


async def test_a_progress_bar_only_on_a_terminal(stored: Settings, tmp_path: Path):
    output = tmp_path / "events.json"
    args = ["export", "--format", "json", "--output", str(output)]
    piped = run(stored, *args, cwd=tmp_path)
    assert piped.stdout == f"Wrote 5 events to {output}\n"

    screen = await asyncio.to_thread(on_a_terminal, stored, args, tmp_path)
    assert "exporting to events.json" in screen
    assert "5/5" in screen
    assert f"Wrote 5 events to {output}" in screen
