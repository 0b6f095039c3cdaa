"""Retention policies: how long each project's events are kept; and the record of the
cleanup runs that apply them (the task itself is `app.services.cleanup`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy import select

from app.errors import InvalidInput, NotFound
from app.models import Project, RetentionPolicy, RetentionRun, utcnow
from app.services.common import Sessions
from app.services.pagination import Page, build_page, decode_cursor, page_size

MAX_DAYS = 3650
MAX_DESTINATION = 1000  # the column's length
RUNS_ORDER = "RETENTION_RUNS"


@dataclass(frozen=True)
class Retention:
    """The policy in force for a project (or the server default when `project_id` is None).
    `is_default` says it was not set for this project but inherited."""

    project_id: int | None
    days: int
    auto_export_before_cleanup: bool
    export_destination: str | None
    is_default: bool


def _as_retention(row: RetentionPolicy, project_id: int | None, inherited: bool) -> Retention:
    return Retention(
        project_id=project_id,
        days=row.days,
        auto_export_before_cleanup=row.auto_export_before_cleanup,
        export_destination=row.export_destination,
        is_default=inherited,
    )


async def get_retention(
    *, sessions: Sessions, project_id: int | None, default_days: int = 90
) -> Retention:
    async with sessions() as session:
        if project_id is not None and await session.get(Project, project_id) is None:
            raise NotFound(f"no project {project_id}", field="projectId")
        rows = (
            await session.scalars(
                select(RetentionPolicy).where(
                    (RetentionPolicy.project_id == project_id)
                    | (RetentionPolicy.project_id.is_(None))  # type: ignore[union-attr]
                )
            )
        ).all()
    own = next((r for r in rows if r.project_id == project_id and project_id is not None), None)
    if own is not None:
        return _as_retention(own, project_id, inherited=False)
    server = next((r for r in rows if r.project_id is None), None)
    if server is not None:
        return _as_retention(server, project_id, inherited=project_id is not None)
    return Retention(
        project_id=project_id,
        days=default_days,
        auto_export_before_cleanup=False,
        export_destination=None,
        is_default=True,
    )


def _check_destination(destination: str | None) -> None:
    if destination is None:
        return
    if len(destination) > MAX_DESTINATION:
        raise InvalidInput(
            f"exportDestination is longer than {MAX_DESTINATION} characters",
            field="exportDestination",
        )
    parts = urlsplit(destination)
    if parts.scheme != "file" or not parts.path.startswith("/"):
        raise InvalidInput(
            "exportDestination must be a file:///absolute/directory URL", field="exportDestination"
        )


async def set_retention(
    *,
    sessions: Sessions,
    project_id: int | None,
    days: int,
    auto_export_before_cleanup: bool | None = None,
    export_destination: str | None = None,
    default_days: int = 90,
) -> Retention:
    """Set a project's policy (or the server default with `project_id` None); arguments
    left None keep their current value."""
    if not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"days must be between 1 and {MAX_DAYS}", field="days")
    _check_destination(export_destination)
    current = await get_retention(
        sessions=sessions, project_id=project_id, default_days=default_days
    )
    auto = (
        current.auto_export_before_cleanup
        if auto_export_before_cleanup is None
        else auto_export_before_cleanup
    )
    destination = (
        export_destination if export_destination is not None else current.export_destination
    )
    if auto and not destination:
        raise InvalidInput(
            "autoExportBeforeCleanup needs an exportDestination", field="exportDestination"
        )
    async with sessions.begin() as session:
        condition = (
            RetentionPolicy.project_id.is_(None)  # type: ignore[union-attr]
            if project_id is None
            else RetentionPolicy.project_id == project_id
        )
        row = (await session.scalars(select(RetentionPolicy).where(condition))).first()
        if row is None:
            row = RetentionPolicy(project_id=project_id)
            session.add(row)
        row.days = days
        row.auto_export_before_cleanup = auto
        row.export_destination = destination
        row.updated_at = utcnow()
    return _as_retention(row, project_id, inherited=False)


async def retention_for_projects(
    *, sessions: Sessions, project_ids: Iterable[int], default_days: int = 90
) -> dict[int, Retention]:
    """The policy in force for each project, as `get_retention` gives it, in one query."""
    wanted = sorted(set(project_ids))
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(RetentionPolicy).where(
                    RetentionPolicy.project_id.in_(wanted)  # type: ignore[union-attr]
                    | RetentionPolicy.project_id.is_(None)  # type: ignore[union-attr]
                )
            )
        ).all()
    own = {row.project_id: row for row in rows if row.project_id is not None}
    server = next((row for row in rows if row.project_id is None), None)
    found: dict[int, Retention] = {}
    for project_id in wanted:
        if project_id in own:
            found[project_id] = _as_retention(own[project_id], project_id, inherited=False)
        elif server is not None:
            found[project_id] = _as_retention(server, project_id, inherited=True)
        else:
            found[project_id] = Retention(
                project_id=project_id,
                days=default_days,
                auto_export_before_cleanup=False,
                export_destination=None,
                is_default=True,
            )
    return found


def _runs_query(project_id: int | None, visible: frozenset[int] | None) -> Any:
    query = select(RetentionRun)
    if project_id is not None:
        query = query.where(RetentionRun.project_id == project_id)
    if visible is not None:
        query = query.where(RetentionRun.project_id.in_(sorted(visible)))  # type: ignore[union-attr]
    return query


async def list_retention_runs(
    *,
    sessions: Sessions,
    project_id: int | None = None,
    visible: frozenset[int] | None = None,
    first: int | None = None,
    after: str | None = None,
) -> Page[RetentionRun]:
    """Cleanup runs, newest first: of one project, or of every project in `visible`
    (None: all)."""
    size = page_size(first)
    query = _runs_query(project_id, visible)
    if after:
        _, row_id = decode_cursor(after, RUNS_ORDER)
        query = query.where(RetentionRun.id < row_id)  # type: ignore[operator]
    query = query.order_by(RetentionRun.id.desc()).limit(size + 1)  # type: ignore[union-attr]
    async with sessions() as session:
        rows = (await session.scalars(query)).all()
    return build_page(rows, size=size, order=RUNS_ORDER, key=lambda run: (run.id, run.id))


async def count_retention_runs(
    *, sessions: Sessions, project_id: int | None = None, visible: frozenset[int] | None = None
) -> int:
    query = sa.select(sa.func.count()).select_from(_runs_query(project_id, visible).subquery())
    async with sessions() as session:
        return int(await session.scalar(query) or 0)


async def latest_retention_run(
    *, sessions: Sessions, project_id: int | None = None, visible: frozenset[int] | None = None
) -> RetentionRun | None:
    """The newest run of a project (of any project in `visible` when `project_id` is None)."""
    page = await list_retention_runs(
        sessions=sessions, project_id=project_id, visible=visible, first=1
    )
    return page.items[0] if page.items else None
