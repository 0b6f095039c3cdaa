"""The `errorgraph` command: serve, and manage projects, keys and tokens.

The CLI reads the same settings as the server (environment, `.env`) and upgrades the
database before touching it, so `errorgraph project create` writes where `errorgraph
serve` reads. Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TypeVar

import orjson
import typer

from app.config import Settings, SettingsError, load_settings
from app.db import Database, create_database, upgrade_database
from app.errors import ErrorgraphError
from app.logging import logging_config
from app.services import alerts as alert_service
from app.services import cleanup as cleanup_service
from app.services import events as event_service
from app.services import exports as export_service
from app.services import keys as key_service
from app.services.keys import CreatedProject

T = TypeVar("T")

cli = typer.Typer(
    name="errorgraph",
    help="A self-hosted error tracker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
project_cli = typer.Typer(help="Create and list projects.", no_args_is_help=True)
key_cli = typer.Typer(help="Create, list and revoke project keys.", no_args_is_help=True)
token_cli = typer.Typer(
    help="Create, list and revoke API tokens for the GraphQL API.", no_args_is_help=True
)
cli.add_typer(project_cli, name="project")
cli.add_typer(key_cli, name="key")
cli.add_typer(token_cli, name="token")
alert_cli = typer.Typer(help="Add, list and remove a project's alert rules.", no_args_is_help=True)
cli.add_typer(alert_cli, name="alert")


class GroupingChoice(StrEnum):
    """The grouping strategies of `app.domain.grouping.STRATEGIES`, for --grouping."""

    FRAMES = "frames"
    LOCATION = "location"


class CliError(Exception):
    """A failure to report as one line."""


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except (CliError, SettingsError, ErrorgraphError) as exc:
        typer.echo(f"errorgraph: error: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"errorgraph: error: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None


def _settings() -> Settings:
    return load_settings()


def _with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def run() -> T:
        database = create_database(settings)
        try:
            try:
                await upgrade_database(database)
            except Exception as exc:
                raise CliError(
                    f"cannot open the database ({settings.database_url.split('@')[-1]}): "
                    f"{type(exc).__name__}: {exc}".splitlines()[0]
                ) from None
            return await work(database)
        finally:
            await database.dispose()

    return asyncio.run(run())


def _created_project_json(settings: Settings, created: CreatedProject) -> dict[str, Any]:
    project = created.project
    assert project.id is not None
    return {
        "id": project.id,
        "slug": project.slug,
        "name": project.name,
        "grouping": project.grouping_strategy,
        "ingest_key": created.ingest_key.secret,
        "api_key": created.api_key.secret,
        "dsn": settings.dsn_for(key=created.ingest_key.secret, project_id=project.id),
        "token": created.token.secret,
    }


def _print_created_project(info: dict[str, Any], base_url: str) -> None:
    typer.echo(f"Project {info['name']!r}: id {info['id']}, slug {info['slug']}")
    typer.echo(f"  Ingest key (safe in a browser): {info['ingest_key']}")
    typer.echo(f"  API key (read, write):          {info['api_key']}")
    typer.echo(f"  Sentry DSN:                     {info['dsn']}")
    typer.echo(f"  Admin API token:                {info['token']}")
    typer.echo("Send a test error:")
    typer.echo(
        f"  curl -X POST {base_url}/api/v1/errors -H 'Content-Type: application/json' \\\n"
        f"""    -d '{{"api_key": "{info["ingest_key"]}", "event_id": "test-1", """
        f""""timestamp": "2025-01-15T10:30:00Z", "type": "exception", """
        f""""exception": {{"type": "TestError", "message": "hello", """
        f""""stack": "TestError: hello\\n    at test.js:1:1"}}}}'"""
    )
    typer.echo("Secrets are shown once; errorgraph stores only their hashes.")


def _emit_json(data: Any) -> None:
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


@project_cli.command("create")
def project_create(
    name: Annotated[str, typer.Argument(help="The project's name.")],
    grouping: Annotated[
        GroupingChoice,
        typer.Option(
            "--grouping",
            help="How events become issues: frames (type + innermost in-app frames, no line "
            "numbers) or location (md5 of project:type:file:line, as the Error Tracker API).",
        ),
    ] = GroupingChoice.FRAMES,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create a project with an ingest key, an API key, a DSN and an admin token."""
    with _one_line_errors():
        settings = _settings()
        created = _with_database(
            settings,
            lambda db: key_service.create_project(
                sessions=db.sessions, name=name, grouping_strategy=grouping.value
            ),
        )
        info = _created_project_json(settings, created)
        if json:
            _emit_json(info)
        else:
            _print_created_project(info, settings.base_url())


@project_cli.command("list")
def project_list(
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List projects."""
    with _one_line_errors():
        settings = _settings()
        projects = _with_database(
            settings, lambda db: key_service.list_projects(sessions=db.sessions)
        )
        rows = [
            {"id": p.id, "slug": p.slug, "name": p.name, "created_at": p.created_at.isoformat()}
            for p in projects
        ]
        if json:
            _emit_json(rows)
        elif not rows:
            typer.echo("No projects yet: errorgraph project create NAME")
        else:
            for row in rows:
                typer.echo(f"{row['id']:>5}  {row['slug']:<30} {row['name']}")


def _events_limit(value: str | None, option: str) -> int | key_service.Keep | None:
    """`--events-per-minute N` (0: no limit) or `default` (the server's)."""
    if value is None:
        return key_service.KEEP
    if value.strip().lower() == "default":
        return None
    if not value.strip().isdigit():
        raise CliError(f"{option} takes a number (0: no limit) or 'default' (got {value!r})")
    return int(value)


def _project_settings_json(project: Any) -> dict[str, Any]:
    return {
        "id": project.id,
        "slug": project.slug,
        "name": project.name,
        "scrub_fields": list(project.scrub_fields or []),
        "scrub_ip_addresses": project.scrub_ip_addresses,
        "events_per_minute": project.events_per_minute,
        "events_per_hour": project.events_per_hour,
    }


def _limit_text(value: int | None, default: int | None) -> str:
    if value is None:
        return f"server default ({default or 'no limit'})"
    return str(value) if value else "no limit"


@project_cli.command("update")
def project_update(
    project: Annotated[str, typer.Argument(help="Project id or slug.")],
    scrub_fields: Annotated[
        str | None,
        typer.Option(
            help="Key names to filter on top of the built-in ones, comma-separated ('' for none).",
        ),
    ] = None,
    scrub_ip_addresses: Annotated[
        bool | None,
        typer.Option(
            "--scrub-ip-addresses/--keep-ip-addresses",
            help="Drop client IP addresses before storage, or keep them.",
        ),
    ] = None,
    events_per_minute: Annotated[
        str | None,
        typer.Option(help="Events a project key may send a minute: N (0: no limit) or default."),
    ] = None,
    events_per_hour: Annotated[
        str | None,
        typer.Option(help="Events a project key may send an hour: N (0: no limit) or default."),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Change a project's scrubbing and quotas; options left out stay as they are."""
    with _one_line_errors():
        settings = _settings()
        per_minute = _events_limit(events_per_minute, "--events-per-minute")
        per_hour = _events_limit(events_per_hour, "--events-per-hour")
        fields: list[str] | key_service.Keep | None = key_service.KEEP
        if scrub_fields is not None:
            fields = [part for part in scrub_fields.split(",") if part.strip()]

        async def work(db: Database) -> Any:
            found = await key_service.project_by_id_or_slug(sessions=db.sessions, ref=project)
            assert found.id is not None
            return await key_service.update_project_settings(
                sessions=db.sessions,
                project_id=found.id,
                scrub_fields=fields,
                scrub_ip_addresses=key_service.KEEP
                if scrub_ip_addresses is None
                else scrub_ip_addresses,
                events_per_minute=per_minute,
                events_per_hour=per_hour,
            )

        info = _project_settings_json(_with_database(settings, work))
        if json:
            _emit_json(info)
            return
        typer.echo(f"Project {info['name']!r}: id {info['id']}, slug {info['slug']}")
        typer.echo(
            f"  Scrubbed fields (besides the built-in): {', '.join(info['scrub_fields']) or 'none'}"
        )
        typer.echo(
            "  Client IP addresses: " + ("dropped" if info["scrub_ip_addresses"] else "stored")
        )
        typer.echo(
            "  Events per key a minute: "
            + _limit_text(info["events_per_minute"], settings.events_per_minute)
        )
        typer.echo(
            "  Events per key an hour: "
            + _limit_text(info["events_per_hour"], settings.events_per_hour)
        )


@key_cli.command("create")
def key_create(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", "-s", help="ingest, read or write; repeatable.")
    ] = None,
    label: Annotated[str, typer.Option(help="A note to tell keys apart.")] = "",
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create a project key (default scope: ingest)."""
    with _one_line_errors():
        settings = _settings()

        async def work(db: Database) -> tuple[key_service.CreatedKey, int]:
            found = await key_service.project_by_id_or_slug(sessions=db.sessions, ref=project)
            assert found.id is not None
            created = await key_service.create_project_key(
                sessions=db.sessions, project_id=found.id, scopes=scope or ["ingest"], label=label
            )
            return created, found.id

        created, project_id = _with_database(settings, work)
        info = {
            "id": created.key.id,
            "project_id": project_id,
            "scopes": created.key.scopes.split(","),
            "key": created.secret,
            "dsn": settings.dsn_for(key=created.secret, project_id=project_id),
        }
        if json:
            _emit_json(info)
        else:
            typer.echo(f"Key {info['id']} ({created.key.scopes}): {created.secret}")
            typer.echo(f"Sentry DSN: {info['dsn']}")


@key_cli.command("list")
def key_list(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List a project's keys (their prefixes: the secrets are not stored)."""
    with _one_line_errors():
        settings = _settings()

        async def work(db: Database) -> list[Any]:
            found = await key_service.project_by_id_or_slug(sessions=db.sessions, ref=project)
            assert found.id is not None
            return await key_service.list_project_keys(sessions=db.sessions, project_id=found.id)

        rows = [
            {
                "id": key.id,
                "prefix": key.prefix,
                "scopes": key.scopes.split(","),
                "label": key.label,
                "created_at": key.created_at.isoformat(),
                "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
            }
            for key in _with_database(settings, work)
        ]
        if json:
            _emit_json(rows)
        else:
            for row in rows:
                state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
                scopes = ",".join(row["scopes"])
                typer.echo(
                    f"{row['id']:>5}  {row['prefix']}…  {scopes:<18} {state}  {row['label']}"
                )


@key_cli.command("revoke")
def key_revoke(key_id: Annotated[int, typer.Argument(help="The key's id.")]) -> None:
    """Revoke a key: clients sending it are refused from now on."""
    with _one_line_errors():
        settings = _settings()
        key = _with_database(
            settings, lambda db: key_service.revoke_project_key(sessions=db.sessions, key_id=key_id)
        )
        typer.echo(f"Key {key.id} ({key.prefix}…) revoked.")


@token_cli.command("create")
def token_create(
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", "-s", help="read, write or admin; repeatable (default read)."),
    ] = None,
    project: Annotated[
        list[str] | None,
        typer.Option("--project", "-p", help="Limit to this project id or slug; repeatable."),
    ] = None,
    label: Annotated[str, typer.Option(help="A note to tell tokens apart.")] = "",
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create an API token for the GraphQL API."""
    with _one_line_errors():
        settings = _settings()

        async def work(db: Database) -> key_service.CreatedToken:
            project_ids = None
            if project:
                project_ids = []
                for ref in project:
                    found = await key_service.project_by_id_or_slug(sessions=db.sessions, ref=ref)
                    assert found.id is not None
                    project_ids.append(found.id)
            return await key_service.create_api_token(
                sessions=db.sessions, scopes=scope or ["read"], label=label, project_ids=project_ids
            )

        created = _with_database(settings, work)
        info = {
            "id": created.token.id,
            "scopes": created.token.scopes.split(","),
            "projects": created.token.project_ids,
            "token": created.secret,
        }
        if json:
            _emit_json(info)
        else:
            limited = (
                "all projects"
                if info["projects"] is None
                else "projects " + ", ".join(map(str, info["projects"]))
            )
            typer.echo(f"Token {info['id']} ({created.token.scopes}; {limited}): {created.secret}")


@token_cli.command("list")
def token_list(json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the API tokens (their prefixes: the secrets are not stored)."""
    with _one_line_errors():
        settings = _settings()
        rows = [
            {
                "id": token.id,
                "prefix": token.prefix,
                "scopes": token.scopes.split(","),
                "projects": token.project_ids,
                "label": token.label,
                "created_at": token.created_at.isoformat(),
                "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
            }
            for token in _with_database(
                settings, lambda db: key_service.list_api_tokens(sessions=db.sessions)
            )
        ]
        if json:
            _emit_json(rows)
        else:
            for row in rows:
                state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
                scopes = ",".join(row["scopes"])
                projects = (
                    "all projects"
                    if row["projects"] is None
                    else "projects " + ",".join(map(str, row["projects"]))
                )
                typer.echo(
                    f"{row['id']:>5}  {row['prefix']}…  {scopes:<18} {projects}  {state}  "
                    f"{row['label']}"
                )


@token_cli.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument(help="The token's id.")]) -> None:
    """Revoke a token: requests bearing it are refused from now on (by running servers
    within ERRORGRAPH_KEY_CACHE_SECONDS)."""
    with _one_line_errors():
        settings = _settings()
        token = _with_database(
            settings,
            lambda db: key_service.revoke_api_token(sessions=db.sessions, token_id=token_id),
        )
        typer.echo(f"Token {token.id} ({token.prefix}…) revoked.")


class TriggerChoice(StrEnum):
    NEW_ISSUE = "new_issue"
    REGRESSION = "regression"
    FREQUENCY = "frequency"


class ChannelChoice(StrEnum):
    EMAIL = "email"
    POSTMARK = "postmark"
    WEBHOOK = "webhook"
    SLACK = "slack"


def _rule_json(rule: Any) -> dict[str, Any]:
    return {
        "id": rule.id,
        "project_id": rule.project_id,
        "name": rule.name,
        "trigger": rule.trigger,
        "threshold": rule.threshold,
        "window_minutes": rule.window_minutes,
        "channel": rule.channel,
        "target": rule.target,
        "enabled": rule.enabled,
        "managed": alert_service.is_managed(rule),
    }


def _rule_line(info: dict[str, Any]) -> str:
    when = info["trigger"]
    if when == "frequency":
        when = f"more than {info['threshold']} events in {info['window_minutes']} min"
    state = "" if info["enabled"] else "  (off)"
    managed = "  (ALERT_EMAILS)" if info["managed"] else ""
    name = f"  {info['name']}" if info["name"] else ""
    return f"{info['id']:>5}  {when} → {info['channel']} {info['target']}{name}{state}{managed}"


@alert_cli.command("add")
def alert_add(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    trigger: Annotated[
        TriggerChoice,
        typer.Option(help="new_issue, regression (a resolved issue came back) or frequency."),
    ],
    channel: Annotated[ChannelChoice, typer.Option(help="email, postmark, webhook or slack.")],
    target: Annotated[
        str, typer.Option(help="Addresses, comma-separated (email, postmark), or a URL.")
    ],
    threshold: Annotated[
        int | None, typer.Option(help="frequency: more than this many events…")
    ] = None,
    window: Annotated[int | None, typer.Option(help="frequency: …in this many minutes.")] = None,
    name: Annotated[str, typer.Option(help="A note to tell rules apart.")] = "",
    header: Annotated[
        list[str] | None,
        typer.Option(help="webhook: a header to send, 'Name: value'; repeatable."),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Add an alert rule to a project."""
    with _one_line_errors():
        settings = _settings()
        options = None
        if header:
            headers = {}
            for item in header:
                key, sep, value = item.partition(":")
                if not sep or not key.strip():
                    raise CliError(f"--header must look like 'Name: value' (got {item!r})")
                headers[key.strip()] = value.strip()
            options = {"headers": headers}

        async def work(db: Database) -> Any:
            found = await key_service.project_by_id_or_slug(sessions=db.sessions, ref=project)
            assert found.id is not None
            return await alert_service.create_alert_rule(
                sessions=db.sessions,
                project_id=found.id,
                trigger=trigger.value,
                channel=channel.value,
                target=target,
                name=name,
                threshold=threshold,
                window_minutes=window,
                options=options,
            )

        info = _rule_json(_with_database(settings, work))
        if json:
            _emit_json(info)
        else:
            typer.echo(f"Alert rule {info['id']} added:")
            typer.echo(_rule_line(info))


@alert_cli.command("list")
def alert_list(
    project: Annotated[str, typer.Option("--project", "-p", help="Project id or slug.")],
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List a project's alert rules."""
    with _one_line_errors():
        settings = _settings()

        async def work(db: Database) -> list[Any]:
            found = await key_service.project_by_id_or_slug(sessions=db.sessions, ref=project)
            assert found.id is not None
            return await alert_service.list_alert_rules(sessions=db.sessions, project_id=found.id)

        rows = [_rule_json(rule) for rule in _with_database(settings, work)]
        if json:
            _emit_json(rows)
        elif not rows:
            typer.echo(f"No alert rules: errorgraph alert add --project {project} …")
        else:
            for row in rows:
                typer.echo(_rule_line(row))


@alert_cli.command("remove")
def alert_remove(rule_id: Annotated[int, typer.Argument(help="The rule's id.")]) -> None:
    """Remove an alert rule and its delivery log."""
    with _one_line_errors():
        settings = _settings()
        rule = _with_database(
            settings,
            lambda db: alert_service.delete_alert_rule(sessions=db.sessions, rule_id=rule_id),
        )
        typer.echo(f"Alert rule {rule.id} removed.")


async def _demo_project(db: Database) -> CreatedProject:
    """The `demo` project with a fresh set of secrets (the old ones stay valid)."""
    projects = await key_service.list_projects(sessions=db.sessions)
    demo = next((p for p in projects if p.slug == "demo"), None)
    if demo is None:
        return await key_service.create_project(sessions=db.sessions, name="demo")
    assert demo.id is not None
    ingest = await key_service.create_project_key(
        sessions=db.sessions, project_id=demo.id, scopes=["ingest"], label="demo ingest"
    )
    api = await key_service.create_project_key(
        sessions=db.sessions, project_id=demo.id, scopes=["read", "write"], label="demo api"
    )
    token = await key_service.create_api_token(
        sessions=db.sessions,
        scopes=["admin", "read", "write"],
        label="demo admin",
        project_ids=[demo.id],
    )
    return CreatedProject(project=demo, ingest_key=ingest, api_key=api, token=token)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (ERRORGRAPH_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (ERRORGRAPH_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    demo: Annotated[
        bool, typer.Option("--demo", help="Create or reuse project 'demo' and print new keys.")
    ] = False,
) -> None:
    """Serve errorgraph with uvicorn."""
    from app import supervisor

    with _one_line_errors():
        if host is not None:
            os.environ["ERRORGRAPH_HOST"] = host
        if port is not None:
            os.environ["ERRORGRAPH_PORT"] = str(port)
        settings = _settings()
        if workers > 1 and settings.broadcast_url.startswith("memory"):
            raise CliError(
                f"--workers {workers} needs a shared pub/sub: memory:// reaches one process "
                "only. Set ERRORGRAPH_BROADCAST_URL=redis://… or postgres://…"
            )
        if workers > 1 and settings.is_sqlite:
            typer.echo(
                "errorgraph: note: the workers share one SQLite file and take turns "
                "writing to it; PostgreSQL is the database for more than one host.",
                err=True,
            )
        created = _with_database(settings, _demo_project if demo else _no_work)
        if created is not None:
            _print_created_project(_created_project_json(settings, created), settings.base_url())
        typer.echo(f"errorgraph listening on {settings.base_url()} (database {_where(settings)})")
        sys.stdout.flush()
    # uvicorn answers SIGTERM by closing the listening socket, waiting (up to the timeout)
    # for requests in flight to be answered, then running the lifespan's shutdown, which
    # drains the batch writer. It then raises SIGTERM again against the handler it found:
    # this one, so that a clean stop exits 0 instead of dying of the signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    # Read by each server process's settings (workers are new processes).
    os.environ.setdefault("ERRORGRAPH_GC_FREEZE", "true")
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "workers": workers if workers > 1 else None,
        "log_level": settings.log_level,
        "log_config": logging_config(level=settings.log_level, log_format=settings.log_format),
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        # The supervisor's, not uvicorn's.
        "worker_timeout": settings.worker_timeout,
        "log_format": settings.log_format,
        "proxy_headers": True,
        # GraphQL messages are small; compressing each one for each subscriber cost more
        # than sending it (a tenth of the fan-out to a thousand subscribers).
        "ws_per_message_deflate": False,
    }
    if workers > 1:
        # A supervisor without the app this process imported to set up (app.supervisor).
        sys.stderr.flush()
        os.execv(
            sys.executable,
            [sys.executable, "-m", "app.supervisor", orjson.dumps(options).decode()],
        )
    supervisor.run(options)


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


# --- Retention: purge and export -----------------------------------------------------------


class ExportFormatChoice(StrEnum):
    JSON = "json"
    CSV = "csv"


@contextmanager
def _progress_bar() -> Iterator[Any]:
    """A progress bar on a terminal; nothing at all when stdout is a file or a pipe."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not sys.stdout.isatty(),
    ) as bar:
        yield bar


async def _project_id(db: Database, ref: str | None) -> int | None:
    if ref is None:
        return None
    found = await key_service.project_by_id_or_slug(sessions=db.sessions, ref=ref)
    return found.id


def _run_line(run: cleanup_service.RunOutcome) -> str:
    counts = f"{run.events_deleted} events and {run.groups_deleted} groups"
    if run.status == "planned":
        return f"{run.project_slug}: would delete {counts}"
    if run.status == "failed":
        return f"{run.project_slug}: failed after deleting {counts}: {run.error}"
    exported = f", exported to {run.exported_to}" if run.exported_to else ""
    return f"{run.project_slug}: deleted {counts}{exported}"


@cli.command()
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; change nothing.")
    ] = False,
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project (id or slug).")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """Apply the retention policies now: export where a policy says so, then delete expired
    events, resolved issues past RETENTION_DAYS and issues left without events."""
    with _one_line_errors():
        settings = _settings()
        with _progress_bar() as bar:
            tasks: dict[str, Any] = {}

            def progress(update: cleanup_service.CleanupProgress) -> None:
                verb = "exporting" if update.stage == "export" else "deleting"
                description = f"{update.project_slug}: {verb}"
                if update.project_slug not in tasks:
                    tasks[update.project_slug] = bar.add_task(description, total=update.total)
                bar.update(
                    tasks[update.project_slug],
                    description=description,
                    completed=update.done,
                    total=update.total,
                )

            async def work(db: Database) -> cleanup_service.CleanupReport:
                return await cleanup_service.run_cleanup(
                    database=db,
                    settings=settings,
                    project_id=await _project_id(db, project),
                    dry_run=dry_run,
                    progress=progress,
                )

            report = _with_database(settings, work)
        if report.skipped:
            raise CliError("another cleanup is running (a server's or a purge); try again later")
        if json:
            _emit_json(
                [
                    {
                        "project_id": run.project_id,
                        "project": run.project_slug,
                        "status": run.status,
                        "events_deleted": run.events_deleted,
                        "groups_deleted": run.groups_deleted,
                        "exported_to": run.exported_to,
                        "error": run.error,
                        "run_id": run.run_id,
                    }
                    for run in report.runs
                ]
            )
        else:
            for run in report.runs:
                typer.echo(_run_line(run))
        if any(run.status == "failed" for run in report.runs):
            raise typer.Exit(1)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(
            f"--since: not an ISO 8601 time (like 2026-01-31T12:00:00Z): {value!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@cli.command("export")
def export_events(
    format: Annotated[
        ExportFormatChoice, typer.Option("--format", "-f", help="json (an array) or csv.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The file to write; replaced when complete.")
    ],
    since: Annotated[
        str | None,
        typer.Option(
            help="Only events that happened at or after this time (ISO 8601, UTC "
            "unless a zone is given)."
        ),
    ] = None,
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project (id or slug).")
    ] = None,
) -> None:
    """Write stored events to a file, in the order they were stored, with every field."""
    with _one_line_errors():
        settings = _settings()
        start = _since(since)
        with _progress_bar() as bar:

            async def work(db: Database) -> int:
                where = event_service.EventFilter(
                    project_id=await _project_id(db, project), since=start
                )
                total = await event_service.count_events(sessions=db.sessions, where=where)
                task = bar.add_task(f"exporting to {output.name}", total=total)
                return await export_service.write_export(
                    sessions=db.sessions,
                    where=where,
                    format="CSV" if format is ExportFormatChoice.CSV else "JSON",
                    output=output,
                    on_rows=lambda n: bar.advance(task, n),
                )

            rows = _with_database(settings, work)
        typer.echo(f"Wrote {rows} events to {output}")


async def _no_work(_db: Database) -> None:
    return None


def _where(settings: Settings) -> str:
    path = settings.sqlite_path
    if path is not None:
        return str(path.resolve())
    return settings.database_url.split("@")[-1]


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
